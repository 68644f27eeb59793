"""Celery, bound to the Flask app, and every Celery setting chosen on purpose.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only
  after its stage ran; a worker killed mid-stage leaves it to be redelivered.
  Safe because stages are idempotent (``pipeline.runner``).
- ``worker_prefetch_multiplier = 1``: a slow provider call never sits on
  messages another worker could run.
- Redis ``visibility_timeout`` (1 h, ``BFF_BROKER_VISIBILITY_TIMEOUT``) is
  longer than any countdown we use, so a retry scheduled with a countdown is
  not redelivered early. It is also how long a message held by a killed
  worker waits before it is delivered again.
- No result backend: Postgres is the source of truth for progress.
- The embedded default broker is kombu's filesystem transport: no server,
  works across processes (file locks), supports fanout for revoke/inspect.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, chain
from flask import Flask

from app.pipeline import STAGES
from app.platform.config import Settings

log = logging.getLogger(__name__)

GENERATION_QUEUE_TASKS = ("pipeline.generate",)


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "pipeline",
        "task_routes": {
            **{name: {"queue": "generation"} for name in GENERATION_QUEUE_TASKS},
            "pipeline.*": {"queue": "pipeline"},
            "maintenance.*": {"queue": "pipeline"},
            "feedback.*": {"queue": "pipeline"},
            "webhooks.*": {"queue": "pipeline"},
        },
        "task_soft_time_limit": 300,
        "task_time_limit": 360,
        "worker_send_task_events": True,  # Flower follows tasks by the workers' events
        "broker_connection_retry_on_startup": True,
        # Submitting must not hang when the broker is down: the row is committed
        # and the dispatcher (beat) sends it later.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.3,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": 3,
        "beat_schedule": {
            "redispatch-stalled": {
                "task": "maintenance.redispatch",
                "schedule": settings.maintenance_interval,
            },
            "webhooks-sweep": {"task": "webhooks.sweep", "schedule": 60.0},
            "storage-sweep": {"task": "maintenance.sweep_storage", "schedule": 60.0},
        },
        "worker_hijack_root_logger": False,
    }
    conf.update(_transport_options(settings))
    return conf


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "broker_transport_options": {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "processed_folder": str(folder / "processed"),
                "store_processed": False,
                # The transport polls the folder; 1 s (the default) would add a second per stage.
                "polling_interval": 0.05,
            },
            "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        }
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    vt = settings.broker_visibility_timeout
    options: dict[str, Any] = {"visibility_timeout": vt}
    if vt < 3600:  # a short timeout is only useful if abandoned messages are swept often
        options.update(
            unacked_restore_interval=max(1, min(10, vt // 4)), unacked_restore_throttle=1
        )
    return {"broker_transport_options": options}


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    config = celery_config(settings)
    celery_app.config_from_object(config)
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def pipeline_chain(celery_app: Celery, generation_id: str, from_stage: str = STAGES[0]) -> chain:
    """The chain of stage tasks from ``from_stage`` on, each taking the
    generation id only (immutable: a stage's return value is not passed on).
    Given its app, ``chain`` takes the signatures as they are, instead of
    folding them with ``|`` (which clones the chain at every step)."""
    names = STAGES[STAGES.index(from_stage) :]
    sigs = [
        celery_app.signature(f"pipeline.{n}", args=(generation_id,), immutable=True) for n in names
    ]
    return chain(*sigs, app=celery_app)


def dispatch(celery_app: Celery, generation_id: str, from_stage: str = STAGES[0]) -> bool:
    """Send the chain from ``from_stage`` on. Call after the row is committed.
    Returns False (and logs) when the broker is unreachable: the caller
    leaves (or makes) ``dispatched_at`` empty and the dispatcher sends it later."""
    try:
        pipeline_chain(celery_app, generation_id, from_stage).apply_async()
    except Exception as exc:  # kombu and redis-py raise several types for "broker down"
        log.warning("could not enqueue %s: %s", generation_id, type(exc).__name__)
        return False
    return True
