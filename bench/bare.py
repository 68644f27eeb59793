"""The orchestration benchmark's baseline: seven no-op Celery tasks chained the
canonical way, ``chain(...).apply_async()``, run by the Procfile's ``worker``
and ``generator`` command lines with ``-A bench.bare``.

Shared with ours is the Celery configuration only (``celery_config``: broker,
queues and routes, acks_late, prefetch, task events). The tasks are named
like our stages so those routes put the sixth on the ``generation`` queue, as
ours. The last one publishes a ``done`` message on the channel our ``store``
stage announces on, so the driver (``bench.load``) waits on both alike."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from functools import cache

import redis
from celery import Celery, chain

from app.platform.config import Settings
from app.platform.queue import celery_config

NAMES = ("analyze", "enhance", "persona", "route", "optimize", "generate", "store")


def create(env: Mapping[str, str]) -> Celery:
    """A Celery app with the seven tasks, configured from ``env``."""
    app = Celery("bare")
    app.config_from_object(celery_config(Settings.from_env(env)))
    events = redis.Redis.from_url(env["REDIS_URL"])

    def noop(name: str) -> None:
        @app.task(name=f"pipeline.{name}", acks_late=True, shared=False)  # this app only
        def task(job_id: str) -> None:
            if name == NAMES[-1]:
                message = {"event": "done", "data": {"id": job_id, "status": "completed"}}
                events.publish(f"bff:events:{job_id}", json.dumps(message))

    for name in NAMES:
        noop(name)
    return app


def submitter(env: Mapping[str, str]) -> Callable[[int], str]:
    """The driver's submit: one job is seven immutable signatures, chained and sent."""
    app = create(env)
    tasks = [app.tasks[f"pipeline.{name}"] for name in NAMES]

    def submit(i: int) -> str:  # noqa: ARG001
        job_id = uuid.uuid4().hex
        chain(*(t.si(job_id) for t in tasks)).apply_async()
        return job_id

    return submit


@cache
def _worker_app() -> Celery:
    return create(os.environ)


def __getattr__(name: str) -> Celery:
    # `celery -A bench.bare` looks up `app`: built on first use from the worker's
    # environment, so importing this module (the driver does) configures nothing.
    if name in ("app", "celery"):
        return _worker_app()
    raise AttributeError(name)
