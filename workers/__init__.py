"""The Celery application: ``celery -A workers worker|beat|flower``.

Two lines, as in Flask's Celery pattern: build the Flask app, take its
Celery app. Tasks are registered by importing ``workers.tasks``.
"""

from app import create_app

flask_app = create_app()
# Most worker commits are progress a re-run re-derives (the runner says which
# are durable): their connections default to asynchronous commit.
flask_app.extensions["bff"].db.relax_by_default()
celery = app = flask_app.extensions["celery"]

from . import notify, tasks  # noqa: E402,F401  (registers the tasks on the app)
