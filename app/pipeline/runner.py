"""Run one stage of one generation and record it; the Celery tasks call
``run_stage`` and nothing else.

Short transactions on one session, so no row lock is held while a stage
works: ``claim_stage`` locks the generation, marks the stage running and
renews the lease; after the stage function, ``record`` locks it again and
writes the result in one transaction with the stage's own rows (a
generation canceled meanwhile keeps its status). A wait and a failure are
recorded in transactions of their own (``endings``). Events and webhooks go
out only after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import import_module
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from app.domain import spend
from app.domain.generations import new_stages
from app.domain.models import Generation, GenerationStage, utcnow
from app.domain.states import (
    CANCELED,
    COMPLETED,
    FINAL,
    LATE_STAGE,
    PROCESSING,
    RESUMED,
    S_COMPLETED,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    S_SKIPPED,
    STAGE_DONE,
    clear_holds,
    ended_for,
    set_stage_status,
    set_status,
)
from app.pipeline import ALL_STAGES, lease, stages_for, stops
from app.pipeline.context import (
    GenerationEnded,
    StageContext,
    StageFailed,
    StageLeaseLost,
    StageResult,
    StageTransient,
    StageWaiting,
)
from app.pipeline.endings import (
    CONTINUE,
    GONE,
    STOP,
    After,
    Outcome,
    announce_final,
    announce_late_refine,
    backoff,
    elapsed_ms,
    end_failed,
    fail_or_retry,
    stop_canceled,
    wait,
)
from app.pipeline.payments import stop_paid_work
from app.platform import events
from app.platform.config import Settings
from app.platform.db import Database
from app.platform.db import unavailable as db_unavailable
from app.platform.storage import Storage, generation_prefix
from app.providers.health import record_outcome

log = logging.getLogger(__name__)
# The stage named N is ``app.pipeline.N.run``.
STAGE_FUNCS: dict[str, Callable[[StageContext], StageResult]] = {
    name: import_module(f"app.pipeline.{name}").run for name in ALL_STAGES
}


class GenerationGone(Exception):
    """The generation was deleted while its stage worked."""


def run_stage(
    db: Database,
    settings: Settings,
    storage: Storage,
    generation_id: str,
    name: str,
    task_id: str | None = None,
    retried: bool = False,
) -> Outcome:
    """``retried``: this is a Celery retry of the delivery (its countdown), so
    a wake-up's id no longer wakes anything."""
    # One connection (one checkout, one ping) for every transaction of the stage.
    with db.engine.connect() as conn, db.Session(bind=conn) as session:
        woken = lease.is_wake_up(task_id) and not retried
        claim = transaction(session, claim_stage, settings, generation_id, name, task_id, woken)
        if isinstance(claim, Outcome):
            return claim
        gen, stage = claim
        ctx = StageContext(
            session,
            gen,
            settings,
            storage,
            previous=lease.checkpoint_of(stage),
            checkpoint=lease.checkpointer(session, gen.id, stage.id, task_id),
            task_id=task_id,
        )
        prefix = generation_prefix(gen.user_id, gen.id)
        with lease.heartbeat(db, stage, task_id, every=settings.stall_timeout / 3):
            outcome = _work(ctx, name, task_id, stage.attempts)
    if outcome.gone:  # whatever this stage stored went after the delete removed the rest
        storage.delete_prefix(prefix)
    return outcome


def _work(ctx: StageContext, name: str, task_id: str | None, attempt: int) -> Outcome:
    """The stage function, then its record; or the wait or failure it ended in."""
    session, settings, gen_id = ctx.session, ctx.settings, ctx.generation.id
    try:
        result = STAGE_FUNCS[name](ctx)
        status = S_SKIPPED if result.skipped else S_COMPLETED
        return transaction(session, record, ctx, name, status, result.output)
    except GenerationEnded as exc:
        log.info("%s: %s stopped: %s", gen_id, name, exc)
        session.rollback()
        stop_paid_work(session, settings, ctx.generation)  # what it started before the cancel
        return transaction(session, stop_canceled, settings, gen_id, name, task_id)
    except StageLeaseLost as exc:
        log.warning("%s: %s stopped: %s", gen_id, name, exc)
        return STOP
    except (GenerationGone, ObjectDeletedError, StaleDataError):
        session.rollback()
        return GONE
    except StageWaiting as exc:
        session.rollback()
        return transaction(session, wait, settings, gen_id, name, task_id, exc)
    except (StageFailed, StageTransient) as exc:
        error, problem = str(exc), exc
    except Exception as exc:
        if db_unavailable(exc):
            # Not the job's fault: the task retries (autoretry_for) and the
            # re-run resumes from the last checkpoint, paying nothing twice.
            raise
        log.exception("%s: stage %s crashed", gen_id, name)
        error, problem = f"internal error in {name}: {type(exc).__name__}", exc
    session.rollback()
    retry_in = None
    if isinstance(problem, StageTransient):
        if attempt < settings.stage_max_attempts:
            retry_in = backoff(attempt, problem.retry_after)
        else:
            error = f"gave up after {attempt} attempts: {error}"
    outcome = transaction(session, fail_or_retry, settings, gen_id, name, task_id, error, retry_in)
    if not outcome.gone and ctx.generation.stage(name).status == S_FAILED:  # for good:
        stop_paid_work(session, settings, ctx.generation)  # what still runs is wasted
    return outcome


def transaction(session: Session, step: Callable[..., Any], *args: Any) -> Any:
    """``step(session, *args, after=[])`` in one transaction, committed if it
    returns; then what it put in ``after`` (events, webhooks) runs."""
    after: After = []
    try:
        result = step(session, *args, after=after)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for announce in after:
        announce()
    return result


def claim_stage(
    session: Session,
    settings: Settings,
    generation_id: str,
    name: str,
    task_id: str | None,
    wake_up: bool,
    after: After,
) -> tuple[Generation, GenerationStage] | Outcome:
    """Take the stage for this delivery, or say why not (an Outcome).
    ``wake_up``: a wake-up's first run, which may take a parked stage."""
    gen = lease.lock(session, generation_id)
    if gen is None or ended_for(gen, name):
        return STOP
    if not gen.stages:  # the first claim writes the generation's stage rows
        gen.stages = new_stages(gen)
    stage = next((s for s in gen.stages if s.name == name), None)
    if stage is None:  # not one of this generation's stages (a refine nobody asked for)
        return STOP
    if stage.status in STAGE_DONE:
        return CONTINUE
    if stage.status == S_FAILED:  # a late refine timed out: its generation stays completed
        return STOP
    if any(s.status not in STAGE_DONE for s in gen.stages if s.position < stage.position):
        log.warning("%s: %s delivered before earlier stages finished", generation_id, name)
        return STOP  # a stale message: the chain of the unfinished stage owns this
    if stage.status == S_PENDING and (hold := lease.retry_hold(stage)):
        gen.updated_at = utcnow()  # run before its retry is due: wait on, alive
        return Outcome(True, lease.hop(hold, settings))
    own_retry = stage.status == S_RUNNING and task_id is not None and stage.task_id == task_id
    # A waiting stage is parked in the broker, not worked on: a wake-up (a
    # Replicate webhook) may take it now; the parked copy then stops.
    parked = bool(lease.parked(stage))
    # (Not its countdown's runs: two wake-ups would take it from each other.)
    woken = parked and wake_up
    # A copy lost as it resumed a wait, having saved (and paid) nothing since,
    # was only looking again: taken over as the wait, once. A copy lost again
    # before it waits counts, so a job that kills its worker is still bounded.
    resumed = parked or lease.resuming(stage)
    if stage.status == S_RUNNING and not (own_retry or woken):
        # Another delivery holds the stage. Its lease is the generation's
        # progress clock: fresh means it is alive, so this copy stops here.
        if not lease.stalled(gen, settings):
            log.info("%s: %s is already running elsewhere", generation_id, name)
            return STOP
        if stage.attempts >= settings.stage_max_attempts and not resumed:
            lost = f"{name} made no progress in {stage.attempts} attempts"
            lost += " (its worker was lost each time)"
            if name == LATE_STAGE and gen.status == COMPLETED:  # no retry resumes its predictions
                stops.owe(session, gen, sending=False)  # so they are stopped (the beat sends it)
            return end_failed(session, settings, gen, stage, lost, after)
    # A parked stage is resumed, never attempted anew: by its countdown, by a
    # wake-up, or, its countdown lost (Redis restarted empty), by a re-send.
    _take(gen, stage, task_id, resumed, parked)
    after.append(lambda: events.stage_changed(settings, generation_id, name, S_RUNNING, None))
    return gen, stage


def _take(
    gen: Generation, stage: GenerationStage, task_id: str | None, resumed: bool, parked: bool
) -> None:
    """Mark the stage running for this delivery and renew the lease;
    ``resumed``: its wait for a provider goes on, no new attempt; ``parked``:
    it resumes its wait (marked so, until it saves anything: ``lease.resuming``)."""
    clear_holds(stage)  # running now: not parked (no wake-up takes it), no longer held
    if parked:
        stage.output = {**(stage.output or {}), RESUMED: True}
    if gen.status not in FINAL:  # a late refine leaves its completed generation so
        set_status(gen, PROCESSING)
    set_stage_status(stage, S_RUNNING)
    gen.updated_at = utcnow()  # progress: renews the lease
    if not resumed:
        stage.attempts += 1
        stage.started_at = utcnow()
    stage.finished_at = stage.duration_ms = stage.error = None
    stage.task_id = task_id


def record(
    session: Session,
    ctx: StageContext,
    name: str,
    status: str,
    output: dict[str, Any],
    after: After,
) -> Outcome:
    """Write a successful stage's result under the generation's lock, with
    what the stage function wrote (its rows; route's provider, generate's cost)."""
    settings = ctx.settings
    session.flush()  # (a deleted generation: StaleDataError, or an asset's foreign key)
    # Ended, or taken over, by someone meanwhile?
    locked = lease.lock_stage(session, ctx.generation.id, name)
    if locked is None:
        raise GenerationGone(ctx.generation.id)
    gen, stage = locked
    if not lease.owns(stage, ctx.task_id):  # taken over (or fenced off) meanwhile
        session.rollback()  # and with it what this copy's stage function wrote
        return STOP
    set_stage_status(stage, status)
    if name in ("generate", "refine"):  # paid as it went: what it held and did not pay goes
        spend.release(gen)
    stage.finished_at, stage.output = utcnow(), output
    stage.duration_ms = duration = elapsed_ms(stage)
    gen.updated_at = utcnow()
    if name == "generate" and gen.provider:
        record_outcome(session, gen.provider, ok=True)
    after.append(lambda: events.stage_changed(settings, gen.id, name, status, duration))
    if gen.status in FINAL:  # e.g. canceled while it worked: whoever ended it announced that
        if name == "generate" and gen.status == CANCELED:  # store will never record them
            stored = [o["storedKey"] for o in output.get("outputs", []) if o.get("storedKey")]
            after.append(lambda: ctx.storage.delete(stored))
        if name == LATE_STAGE and gen.status == COMPLETED:  # a refine asked afterwards
            announce_late_refine(session, settings, gen, after)
        return STOP
    if name == stages_for(gen.settings)[-1]:  # the last of this generation's own stages
        set_status(gen, COMPLETED)
        announce_final(session, settings, gen, after)
    return CONTINUE
