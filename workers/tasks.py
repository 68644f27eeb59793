"""Thin Celery tasks: one per pipeline stage plus maintenance. Each takes an
id, runs a plain function from ``app`` and turns its outcome into Celery
terms (retry with a countdown, or stop the chain). No logic lives here."""

from __future__ import annotations

import gc
import logging

from celery import shared_task
from celery.exceptions import Ignore
from celery.signals import worker_init, worker_process_init
from flask import current_app
from sqlalchemy.exc import InterfaceError, OperationalError

from app.pipeline import STAGES, orphans
from app.pipeline.maintenance import (
    apply_one_feedback,
    apply_pending_feedback,
    expire_overdue,
    note_db_outage,
    redispatch_stalled,
)
from app.pipeline.runner import run_stage

log = logging.getLogger(__name__)


@worker_init.connect
def _freeze_loaded_objects(**_: object) -> None:
    # The loaded app (SQLAlchemy, Celery, kombu, boto3, ...) is ~200k long-lived
    # objects every full collection would walk again (~0.14 s each, about one
    # per 200 generations): moved out of the collector's sight. In the prefork
    # parent this is also before the fork, so children inherit it.
    gc.freeze()


@worker_process_init.connect
def _dispose_engine_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's pooled connections.
    from workers import flask_app

    flask_app.extensions["bff"].db.dispose()
    gc.freeze()  # what the child set up, as above


class GenerationFailed(Exception):
    """The generation failed at this stage (its error is recorded): the chain
    stops and Flower shows the task failed with the reason. Declared in the
    stage tasks' ``throws``, so it is logged as an expected outcome."""


# Stages are idempotent, so a message may be acked late and redelivered.
# A database outage (OperationalError, InterfaceError: the runner lets them
# through instead of failing the job) is retried by Celery with backoff.
# No Celery retry limit (``max_retries=None``): every re-send of a stage is a
# wait the runner chose (a provider still working, a rate-limit token, a
# transient failure it counts and caps itself) or a database outage, and
# Celery's count covers all of them. With a cap, a prediction polled more
# than that many times raised MaxRetriesExceededError and dropped the
# message, leaving the job to the stall sweep.
STAGE_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": None,
    "throws": (GenerationFailed,),
}


def _run(task, generation_id: str, name: str) -> None:
    """Run the stage; Celery's chain sends the next one when this returns.
    A wait is a retry with a countdown (same task id, same chain); a stop
    (canceled, already running or done elsewhere) is ``Ignore``, which acks
    the message and ends the chain."""
    s = current_app.extensions["bff"]
    try:
        outcome = run_stage(
            s.db, s.settings, s.storage, generation_id, name, task_id=task.request.id
        )
    except (OperationalError, InterfaceError):
        note_db_outage(s.settings)  # owners are waiting, not dead: no takeovers yet
        raise
    if outcome.retry_in is not None:
        raise task.retry(countdown=outcome.retry_in, max_retries=None)
    if outcome.error is not None:
        raise GenerationFailed(outcome.error)
    if not outcome.proceed:
        raise Ignore()


@shared_task(name="pipeline.analyze", **STAGE_OPTIONS)
def analyze(self, generation_id: str) -> None:
    _run(self, generation_id, "analyze")


@shared_task(name="pipeline.enhance", **STAGE_OPTIONS)
def enhance(self, generation_id: str) -> None:
    _run(self, generation_id, "enhance")


@shared_task(name="pipeline.persona", **STAGE_OPTIONS)
def persona(self, generation_id: str) -> None:
    _run(self, generation_id, "persona")


@shared_task(name="pipeline.route", **STAGE_OPTIONS)
def route(self, generation_id: str) -> None:
    _run(self, generation_id, "route")


@shared_task(name="pipeline.optimize", **STAGE_OPTIONS)
def optimize(self, generation_id: str) -> None:
    _run(self, generation_id, "optimize")


@shared_task(name="pipeline.generate", **STAGE_OPTIONS)
def generate(self, generation_id: str) -> None:
    _run(self, generation_id, "generate")


@shared_task(name="pipeline.store", **STAGE_OPTIONS)
def store(self, generation_id: str) -> None:
    _run(self, generation_id, "store")


STAGE_TASKS = {
    t.name.split(".")[1]: t for t in (analyze, enhance, persona, route, optimize, generate, store)
}
assert tuple(STAGE_TASKS) == STAGES, "one task per stage, in order"


@shared_task(name="feedback.apply", acks_late=True)
def apply_feedback_task(feedback_id: int) -> None:
    s = current_app.extensions["bff"]
    apply_one_feedback(s.db, feedback_id)


@shared_task(name="maintenance.redispatch", acks_late=True)
def redispatch_task() -> None:
    s = current_app.extensions["bff"]
    try:
        sent = redispatch_stalled(s.db, s.celery, s.settings)
        expired = expire_overdue(s.db, s.settings)
    except (OperationalError, InterfaceError):
        note_db_outage(s.settings)
        raise
    applied = apply_pending_feedback(s.db)
    if sent or applied or expired:
        log.info(
            "maintenance: re-dispatched %d generation(s), timed out %d, applied %d feedback",
            sent,
            expired,
            applied,
        )


@shared_task(name="maintenance.sweep_storage", acks_late=True)
def sweep_storage_task() -> None:
    s = current_app.extensions["bff"]
    orphans.sweep(s.db, s.storage)
