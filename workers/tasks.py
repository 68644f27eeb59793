"""Thin Celery tasks: one per pipeline stage plus maintenance. Each takes an
id, runs a plain function from ``app`` and turns its outcome into Celery
terms (retry with a countdown, or stop the chain). No logic lives here."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from celery import shared_task
from celery.exceptions import Ignore
from celery.signals import worker_init, worker_process_init
from flask import current_app
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.domain import batch_flows
from app.pipeline import ALL_STAGES, orphans, stops
from app.pipeline.maintenance import (
    apply_one_feedback,
    apply_pending_feedback,
    end_abandoned_stages,
    expire_overdue,
    forget_tombstones,
    note_db_outage,
    redispatch_stalled,
)
from app.pipeline.runner import run_stage
from app.platform import metric_rollup
from app.platform.db import went_away

if TYPE_CHECKING:
    from app.platform.config import Settings

log = logging.getLogger(__name__)


@worker_init.connect
def _fit_pool_and_freeze(sender: object, **_: object) -> None:
    from workers import flask_app

    # A threads pool's tasks share this process's connections (prefork
    # children run one task each: the default pool is plenty).
    flask_app.extensions["bff"].db.fit_pool(sender.concurrency)
    # The loaded app is ~200k long-lived objects every full collection would
    # walk again: moved out of the collector's sight (before the fork, so
    # prefork children inherit it).
    gc.freeze()


@worker_process_init.connect
def _dispose_engine_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's pooled connections.
    from workers import flask_app

    flask_app.extensions["bff"].db.dispose()
    gc.freeze()  # what the child set up, as above


@contextmanager
def _noting_db_outage(settings) -> Iterator[None]:
    """A database outage is re-raised for Celery to retry, and noted: the
    stages' owners are waiting, not dead, so no takeovers yet. A statement
    the database refused (``went_away``: e.g. a statement timeout) is retried
    too, but noted as an outage it would hold every takeover back while it
    recurs."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if not went_away(exc):
            why = type(exc.orig or exc).__name__  # its class: a message may quote values
            log.warning("database refused a statement (%s): the stage will be retried", why)
            raise
        note_db_outage(settings)
        # (Celery's own retry line is INFO: an outage should reach a WARNING filter.)
        log.warning("database unavailable (%s): the stage will be retried", type(exc).__name__)
        raise


# The database did not answer (or no pooled connection came free in time).
DB_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


@contextmanager
def beat_pass(job: str, settings: Settings | None = None) -> Iterator[None]:
    """A beat job's pass that meets a database outage ends in one WARNING
    line: beat sends the next pass within seconds, so Celery's ERROR and
    traceback for every pass (several a minute) would only bury the outage.
    Any other error (``went_away``) is Celery's ERROR with its traceback.
    ``settings``: note the outage too (``_noting_db_outage``)."""
    try:
        yield
    except DB_UNAVAILABLE as exc:
        if not went_away(exc):
            raise
        if settings is not None:
            note_db_outage(settings)
        log.warning("%s skipped: database unavailable (%s)", job, type(exc).__name__)


class GenerationFailed(Exception):
    """The generation failed at this stage (its error is recorded): the chain
    stops and Flower shows the task failed with the reason. Declared in the
    stage tasks' ``throws``, so it is logged as an expected outcome."""


# Stages are idempotent, so a message may be acked late and redelivered; a
# database outage (the runner lets it through) is retried with backoff.
# No Celery retry limit: Celery counts every re-send, including the waits the
# runner chose (provider polls, rate-limit tokens, transient failures it caps
# itself). With a cap, a long-polled prediction raised
# MaxRetriesExceededError and its message was dropped
# (tests/test_deploy_files.py).
RETRIED = {
    "acks_late": True,
    # TimeoutError: no pooled connection came free in time (every one held
    # by a stage at work): not the job's fault, as a database outage is not.
    "autoretry_for": DB_UNAVAILABLE,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": None,
}


def _run(task, generation_id: str, name: str) -> None:
    """Run the stage; Celery's chain sends the next one when this returns.
    A wait is a retry with a countdown (same task id, same chain); a stop
    (canceled, already running or done elsewhere) is ``Ignore``, which acks
    the message and ends the chain."""
    s = current_app.extensions["bff"]
    with _noting_db_outage(s.settings):
        outcome = run_stage(
            s.db,
            s.settings,
            s.storage,
            generation_id,
            name,
            task_id=task.request.id,
            retried=bool(task.request.retries),
        )
    if outcome.retry_in is not None:
        raise task.retry(countdown=outcome.retry_in)
    if outcome.error is not None:
        raise GenerationFailed(outcome.error)
    if not outcome.proceed:
        raise Ignore()


def _stage_task(name: str):
    @shared_task(name=f"pipeline.{name}", bind=True, throws=(GenerationFailed,), **RETRIED)
    def stage(self, generation_id: str) -> None:
        _run(self, generation_id, name)

    return stage


STAGE_TASKS = {name: _stage_task(name) for name in ALL_STAGES}
analyze, enhance, persona, route, optimize, generate, store, refine = STAGE_TASKS.values()


# Retried as a stage is: it records nothing twice (payments are named), and
# the stop stays owed (a row) whatever happens to this message.
@shared_task(name=stops.TASK, **RETRIED)
def stop_paid_work_task(stop_id: int) -> None:
    """A stopped generation's predictions canceled, and those found paid recorded."""
    s = current_app.extensions["bff"]
    stops.make(s.db, s.settings, stop_id)


@shared_task(name="feedback.apply", acks_late=True)
def apply_feedback_task(feedback_id: int) -> None:
    s = current_app.extensions["bff"]
    apply_one_feedback(s.db, feedback_id)


@shared_task(name="maintenance.redispatch", acks_late=True)
def redispatch_task() -> None:
    s = current_app.extensions["bff"]
    with beat_pass("maintenance.redispatch", s.settings):
        sent = redispatch_stalled(s.db, s.celery, s.settings)
        expired = expire_overdue(s.db, s.settings)
        end_abandoned_stages(s.db, s.settings)
        forget_tombstones(s.db, s.settings)
        stops.resend_owed(s.db, s.celery)  # a timeout's, or a stop whose message was lost
        applied = apply_pending_feedback(s.db)
        batch_flows.sweep(s)  # batches whose last member's own check was lost
        if sent or applied or expired:
            msg = "maintenance: re-dispatched %d generation(s), timed out %d (or their refines),"
            msg += " applied %d feedback"
            log.info(msg, sent, expired, applied)


@shared_task(name="maintenance.sweep_storage", acks_late=True)
def sweep_storage_task() -> None:
    s = current_app.extensions["bff"]
    with beat_pass("maintenance.sweep_storage"):
        orphans.sweep(s.db, s.storage)


@shared_task(name="maintenance.roll_up_metrics", acks_late=True)
def roll_up_metrics_task() -> None:
    with beat_pass("maintenance.roll_up_metrics"):
        current_app.extensions["bff"].db.transaction(metric_rollup.roll_up)
