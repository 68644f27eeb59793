"""Designer BFF: the Flask application factory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported in create_app: the ``bff`` client runs no server
    from flask import Blueprint, Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` uses the environment variables' names
    (``DATABASE_URL``, ``STORAGE_BACKEND``, …) and is laid over ``os.environ``."""
    # Here, not at the top: importing any ``app`` module runs this package
    # first, and the ``bff`` command's client side needs none of the server.
    from flask import Flask

    from app.api import protocol
    from app.api.common import MAX_JSON_BYTES, Services
    from app.api.errors import register_error_handlers
    from app.platform import logs
    from app.platform.config import Settings
    from app.platform.db import Database
    from app.platform.queue import celery_init_app
    from app.platform.storage import make_storage
    from app.providers import pricing

    env = {**os.environ, **{k: str(v) for k, v in (config or {}).items() if v is not None}}
    settings = Settings.from_env(env)
    logs.configure(settings)
    pricing.configure(settings.prices_file)

    app = Flask(__name__)
    # Every body's limit, checked before it is read: an image upload's form
    # is allowed more by its route (``submit.from_image``).
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BYTES
    app.json.sort_keys = False
    app.url_map.merge_slashes = False  # "//" names nothing: a JSON 404, not an HTML redirect
    if settings.database_url == f"sqlite:///{settings.var_dir / 'bff.db'}":
        settings.var_dir.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder

    celery_app = celery_init_app(app, settings)
    app.extensions["bff"] = Services(
        settings=settings,
        db=Database(settings.database_url, settings.db_statement_timeout),
        storage=make_storage(settings),
        celery=celery_app,
    )
    register_error_handlers(app)
    protocol.register(app)  # limits and OPTIONS: before any route
    logs.init_app(app)
    for blueprint in _blueprints():
        app.register_blueprint(blueprint)
    return app


def _blueprints() -> list[Blueprint]:
    """Every route of the app, in the order they are registered."""
    from app.api import (
        account,
        batch_archive,
        batches,
        events,
        feedback,
        generations,
        health,
        personas,
        providers,
        refine,
        replicate_webhook,
        submit,
        web,
    )
    from app.platform import metrics  # no auth: scraped by Prometheus

    modules = (submit, generations, feedback, refine, events, personas, account, providers)
    modules += (replicate_webhook, batches, batch_archive, health, web, metrics)
    return [module.bp for module in modules]
