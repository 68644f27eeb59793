"""The Celery application (``celery -A workers worker|beat|flower``), as in
Flask's Celery pattern: build the Flask app, take its Celery app."""

from app import create_app
from app.platform.config import ConfigError
from app.platform.queue import warn_of_a_local_broker
from workers.flower import guard

guard()  # under `celery -A workers flower`: no credentials, no Flower
try:
    flask_app = create_app()
except ConfigError as exc:  # one line, not Celery's traceback of the import
    raise SystemExit(f"Error: {exc}") from None
celery = app = flask_app.extensions["celery"]
warn_of_a_local_broker(flask_app.extensions["bff"].settings)

from . import notify, tasks  # noqa: E402,F401  (registers the tasks on the app)
