"""Celery, bound to the Flask app, and every Celery setting chosen on purpose.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only
  after its stage ran, so a killed worker's stage is redelivered (stages are
  idempotent).
- ``worker_prefetch_multiplier = 1``: a slow provider call never sits on
  messages another worker could run.
- Redis ``visibility_timeout`` (``BFF_BROKER_VISIBILITY_TIMEOUT``, 1 h) is
  longer than any countdown we use, so a retry is not redelivered early.
- No result backend: Postgres is the source of truth for progress.
- A broker that is down or silent costs a publish seconds, not the request:
  a short retry policy, and (Redis) socket timeouts kombu leaves unset; the
  dispatcher (beat) sends what was refused.
- The embedded broker is kombu's filesystem transport: no server, works across
  processes, supports fanout for revoke/inspect. ``app.platform.fsbroker``
  makes its writes and takes atomic (kombu #1551); ``broker_url`` stays
  ``filesystem://`` and ``broker_transport`` names the class.
- Depth first: each stage's message carries a priority, later stages first,
  so started generations finish before new ones start (``PRIORITY``).
- Batches in the background: a batch's chains are sent ``BACKGROUND`` steps
  below single jobs, so one user's 100-item batch never starves other
  users' single jobs (``priority``; the Redis broker gets ten steps, the
  embedded one orders its files by them).
- A batch is one canvas ``group`` of its chains (``dispatch_group``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, Task, chain, group
from flask import Flask

from app.pipeline import STAGES
from app.platform.config import Settings

log = logging.getLogger(__name__)
# Seconds to connect to the broker, and for any one reply of a Redis broker.
# kombu's Redis transport waits for ever by default (no socket timeouts; not
# ``broker_connection_timeout``'s), so a publish to a Redis that accepted the
# connection but never answers held the submit's request thread for good.
BROKER_CONNECT_TIMEOUT = 3.0
BROKER_SOCKET_TIMEOUT = 3.0  # above the transport's 1 s BRPOP: a worker's wait is no timeout


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "pipeline",
        # Calls out (providers, users' webhook receivers) on their own queue,
        # served by threads: a slow receiver must not hold a light stage's
        # process. Everything else on "pipeline".
        "task_routes": {
            "pipeline.generate": {"queue": "generation"},
            "pipeline.refine": {"queue": "generation"},  # provider calls too
            "providers.stop_paid_work": {"queue": "generation"},  # Replicate's cancels
            "webhooks.deliver": {"queue": "generation"},
        },
        "task_soft_time_limit": 300,
        "task_time_limit": 360,
        "worker_send_task_events": True,  # Flower follows tasks by the workers' events
        "broker_connection_retry_on_startup": True,
        # Submitting must not hang when the broker is down: the row is committed
        # and the dispatcher (beat) sends it later.
        "task_publish_retry_policy": dict(
            max_retries=2, interval_start=0.2, interval_step=0.3, interval_max=0.5
        ),
        "broker_connection_timeout": BROKER_CONNECT_TIMEOUT,
        "beat_schedule": {
            "redispatch-stalled": {
                "task": "maintenance.redispatch",
                "schedule": settings.maintenance_interval,
            },
            # (Every pass: a message the broker refused goes at the next.)
            "webhooks-sweep": {"task": "webhooks.sweep", "schedule": settings.maintenance_interval},
            "storage-sweep": {"task": "maintenance.sweep_storage", "schedule": 60.0},
            "metrics-rollup": {"task": "maintenance.roll_up_metrics", "schedule": 60.0},
        },
        "worker_hijack_root_logger": False,
    } | _transport_options(settings)


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            # kombu's filesystem transport, with atomic writes and takes (kombu #1551).
            "broker_transport": "app.platform.fsbroker:Transport",
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
    # A list per priority 0-9 (kombu's default is 0, 3, 6, 9): room for batch
    # stages below every single job's stage (``priority``).
    options: dict[str, Any] = {
        "visibility_timeout": vt,
        "priority_steps": list(range(10)),
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
        "socket_timeout": BROKER_SOCKET_TIMEOUT,
    }
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
    celery_app.config_from_object(celery_config(settings))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def warn_of_a_local_broker(settings: Settings) -> None:
    """At a server process's start (web, Celery): a shared database beside a
    broker in this machine's folder means a web and a worker on two machines
    (or containers) never see each other's jobs, and /health cannot tell (a
    REDIS_URL under another name, say)."""
    if settings.embedded_broker and not settings.database_url.startswith("sqlite"):
        log.warning(
            "no REDIS_URL or CELERY_BROKER_URL: jobs go through the embedded broker in %s, "
            "which only processes sharing that folder see",
            settings.broker_folder,
        )


# Kombu's Redis transport keeps a list per priority step and pops 0 first: a
# later stage of a started generation runs before the first stage of a new one,
# and every single job's stage before any batch's (``BACKGROUND`` steps lower).
# A retry keeps its message's priority. The embedded broker takes them in the
# same order (``fsbroker``); RabbitMQ queues declared without x-max-priority
# ignore message priorities.
PRIORITY = {"analyze": 3, "enhance": 2, "persona": 2, "route": 1, "optimize": 1}
BACKGROUND = 5
LAST = 9  # after every stage: work nobody waits on (the optimiser learning feedback)


def priority(stage: str, background: bool = False) -> int:
    """The stage's message priority (0 is taken first); ``background`` for a batch's."""
    return PRIORITY.get(stage, 0) + (BACKGROUND if background else 0)


def stage_chain(
    celery_app: Celery,
    generation_id: str,
    from_stage: str = STAGES[0],
    background: bool = False,
    first_task_id: str | None = None,
    stages: Sequence[str] = STAGES,
) -> chain:
    """The chain of stage tasks from ``from_stage`` on, each taking the
    generation id only (immutable: a stage's return value is not passed on).
    ``stages``: the generation's own stages (``generations.stage_names``;
    with ``refine`` when it asks)."""
    names = list(stages)[list(stages).index(from_stage) :]
    sigs = [
        celery_app.signature(
            f"pipeline.{n}",
            args=(generation_id,),
            immutable=True,
            priority=priority(n, background),
            task_id=task_id(generation_id, n),
        )
        for n in names
    ]
    if first_task_id is not None:
        sigs[0] = sigs[0].set(task_id=first_task_id)
    return chain(*sigs, app=celery_app)


def task_id(generation_id: str, stage: str) -> str:
    """A stage task's id names its generation and stage, so the worker's
    "Task pipeline.generate[…] received" lines and Flower's task ids can be
    searched by generation id (unique: 64 random bits a send)."""
    return f"{generation_id}.{stage}.{secrets.token_hex(8)}"


def dispatch(
    celery_app: Celery,
    generation_id: str,
    from_stage: str = STAGES[0],
    first_task_id: str | None = None,
    background: bool = False,
    stages: Sequence[str] = STAGES,
) -> bool:
    """Send the generation's chain (``stage_chain``). Call after the row is
    committed. Returns False (and logs) when the broker is unreachable: the
    caller leaves (or makes) ``dispatched_at`` empty and the dispatcher sends
    it later. ``first_task_id`` names the first task (a wake-up:
    ``lease.wake_up_task_id``); ``background``: a batch's generation;
    ``stages``: the generation's own stages (with ``refine`` when it asks)."""
    sig = stage_chain(celery_app, generation_id, from_stage, background, first_task_id, stages)
    try:
        # Its own root, also when a task sends it (maintenance): Celery would
        # make the sender the root of every chain it sends.
        sig.apply_async(root_id=sig.tasks[0].id)
    except Exception as exc:  # kombu and redis-py raise several types for "broker down"
        log.warning("could not enqueue %s: %s", generation_id, _why(exc))
        return False
    return True


def dispatch_group(
    celery_app: Celery,
    generation_ids: Sequence[str],
    stages: Mapping[str, Sequence[str]] | None = None,
) -> bool:
    """Send a batch: one canvas ``group`` of its generations' chains, in the
    background (``stages``: a generation's own stages by id where they are
    not ``STAGES``: one whose settings ask for ``refine``). False (logged)
    when the broker failed part way: the caller clears ``dispatched_at`` of
    them all and the dispatcher sends them again (a chain sent twice is
    harmless: stages are idempotent and leased)."""
    own = stages or {}
    chains = [
        stage_chain(celery_app, gid, background=True, stages=own.get(gid, STAGES))
        for gid in generation_ids
    ]
    try:
        group(chains, app=celery_app).apply_async()
    except Exception as exc:  # as in dispatch
        log.warning("could not enqueue a batch of %d: %s", len(chains), _why(exc))
        return False
    return True


def _why(exc: BaseException) -> str:
    """The broker's error for the log, as the workers log it (host, port,
    reason; kombu and redis-py name no password)."""
    said = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {said[0][:300]}" if said else type(exc).__name__
