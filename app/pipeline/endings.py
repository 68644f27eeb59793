"""How a stage run ends when it does not simply succeed: it waits (a
provider working, a rate-limit token not yet free), it fails and is retried
with backoff, it fails the generation, or the generation runs out of time.
Each is one transaction under the generation's lock (``lease.lock``); what it
announces goes in ``after`` and is sent once the transaction has committed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.domain import spend
from app.domain.generations import (
    elapsed_ms,
    first_unfinished,
    give_up_canceled,
    late_refine_overdue,
    new_stages,
)
from app.domain.models import Generation, GenerationStage, utcnow
from app.domain.states import (
    CANCELED,
    COMPLETED,
    FAILED,
    FINAL,
    LATE_STAGE,
    RETRY_AT,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    WAITING,
    ended_for,
    refining,
    set_stage_status,
    set_status,
)
from app.pipeline import lease, stops
from app.pipeline.context import StageWaiting
from app.platform import events
from app.platform.config import Settings
from app.providers.health import record_outcome
from app.webhooks import record_final

log = logging.getLogger(__name__)

After = list[Callable[[], None]]  # what to announce once the transaction has committed


@dataclass(frozen=True)
class Outcome:
    proceed: bool  # False: stop the chain here
    retry_in: float | None = None  # set: run this stage again after that many seconds
    error: str | None = None  # set: the generation failed at this stage
    gone: bool = False  # the generation was deleted while this stage worked


CONTINUE, STOP, GONE = Outcome(True), Outcome(False), Outcome(False, gone=True)


def wait(
    session: Session,
    settings: Settings,
    generation_id: str,
    name: str,
    task_id: str | None,
    exc: StageWaiting,
    after: After,
) -> Outcome:
    """The stage is waiting (a provider working, a rate-limit token not yet
    free): keep what it asked to keep, renew the lease, run it again later."""
    gen = lease.lock(session, generation_id)
    if gen is None:
        return GONE
    if ended_for(gen, name):  # e.g. canceled as it looked at its provider
        _give_up_if_canceled(settings, gen, name, task_id, after)
        return STOP
    stage = gen.stage(name)
    if task_id is not None and stage.task_id != task_id:
        # Taken over while it waited: the owner's checkpoint is not ours.
        log.warning("%s: %s stopped: taken over by %s", generation_id, name, stage.task_id)
        return STOP
    stage.output = {
        **(stage.output or {}),
        **exc.state,
        lease.CHECKPOINT: True,
        WAITING: exc.reason,
    }
    gen.updated_at = utcnow()  # still alive: renews the lease
    # A longer wait is taken in hops, each renewing the lease, so a waiting
    # stage never looks lost; a run before its time waits again (the
    # provider is polled, a reserved token is kept in the checkpoint).
    return Outcome(True, lease.hop(exc.retry_in, settings))


def fail_or_retry(
    session: Session,
    settings: Settings,
    generation_id: str,
    name: str,
    task_id: str | None,
    error: str,
    retry_in: float | None,
    after: After,
) -> Outcome:
    gen = lease.lock(session, generation_id)
    if gen is None:
        return GONE
    stage = gen.stage(name)
    if stage.task_id != task_id and task_id is not None:  # taken over, or fenced off
        log.warning("%s: %s failed in a copy that no longer owns it: %s", gen.id, name, error)
        return STOP
    stage.duration_ms = elapsed_ms(stage)
    if name == "generate" and gen.provider:
        record_outcome(session, gen.provider, ok=False, error=error)
    if retry_in is None or ended_for(gen, name):
        return end_failed(session, settings, gen, stage, error, after)
    set_stage_status(stage, S_PENDING)
    stage.error = f"attempt {stage.attempts} failed, retrying in {retry_in:.1f}s: {error}"
    gen.updated_at = utcnow()
    after.append(lambda: events.stage_changed(settings, generation_id, name, S_PENDING, None))
    countdown = lease.hop(retry_in, settings)
    if countdown < retry_in:  # in hops, as a wait: the lease renewed, an early run waits again
        due = utcnow() + timedelta(seconds=retry_in)
        stage.output = {**(stage.output or {}), RETRY_AT: due.isoformat()}
    return Outcome(True, countdown)


def stop_canceled(
    session: Session,
    settings: Settings,
    generation_id: str,
    name: str,
    task_id: str | None,
    after: After,
) -> Outcome:
    """This copy stopped at a checkpoint: its generation was canceled."""
    gen = lease.lock(session, generation_id)
    if gen is not None:
        _give_up_if_canceled(settings, gen, name, task_id, after)
    return STOP


def _give_up_if_canceled(
    settings: Settings, gen: Generation, name: str, task_id: str | None, after: After
) -> None:
    """A copy that stops because its generation was canceled (at a checkpoint,
    or about to wait again) gives up the stage it holds, still running: nothing
    else would end it (its paid work is canceled)."""
    if gen.status != CANCELED:
        return
    stage = gen.stage(name)
    if stage.status == S_RUNNING and stage.task_id == task_id:
        give_up_canceled(stage)
        gen_id, ms = gen.id, stage.duration_ms
        after.append(lambda: events.stage_changed(settings, gen_id, name, S_FAILED, ms))


def end_failed(
    session: Session,
    settings: Settings,
    gen: Generation,
    stage: GenerationStage,
    error: str,
    after: After,
    code: str | None = None,
) -> Outcome:
    """Fail the stage and, unless it has ended already, the generation
    (``code``: its error's code, e.g. ``timeout``; ``stage_failed`` if None)."""
    was_final = gen.status in FINAL
    spend.release(gen)  # what the stage held, it did not pay
    set_stage_status(stage, S_FAILED)
    stage.error, stage.finished_at = error, utcnow()
    if not was_final:
        set_status(gen, FAILED)
        gen.error_stage, gen.error_message, gen.error_code = stage.name, error, code
    gen.updated_at = utcnow()  # a change clients see, even of an ended generation
    gen_id, name, duration = gen.id, stage.name, stage.duration_ms
    after.append(lambda: events.stage_changed(settings, gen_id, name, S_FAILED, duration))
    if was_final:
        if name == LATE_STAGE and gen.status == COMPLETED:  # a refine asked afterwards
            announce_late_refine(session, settings, gen, after)
        return STOP
    announce_final(session, settings, gen, after)
    return Outcome(False, error=error)


def announce_final(session: Session, settings: Settings, gen: Generation, after: After) -> None:
    """``gen`` has just ended: its webhook is recorded in this transaction;
    once that commits, the streams are woken, the webhook sent and its batch
    finished if it was the last."""
    delivery = record_final(session, gen, settings)
    gen_id, status, batch_id = gen.id, gen.status, gen.batch_id
    after.append(
        lambda: events.generation_final(
            settings, gen_id, status, delivery, record_webhook=False, batch_id=batch_id
        )
    )


def announce_late_refine(
    session: Session, settings: Settings, gen: Generation, after: After
) -> None:
    """A refine asked after its generation completed has ended (its variants
    recorded, or its error): the generation's webhook gets the generation
    again, as the receiver would otherwise have to poll for the variants."""
    delivery = record_final(session, gen, settings, event="generation.refined")
    if delivery:
        gen_id = gen.id
        after.append(
            lambda: events.generation_final(
                settings, gen_id, COMPLETED, delivery, record_webhook=False
            )
        )


def time_out(
    session: Session, settings: Settings, generation_id: str, after: After
) -> Generation | None:
    """Fail a generation past its deadline at the stage it is in (None: it
    ended meanwhile)."""
    gen = lease.lock(session, generation_id)
    if gen is None or gen.status in FINAL:
        return None
    if not gen.stages:  # never claimed
        gen.stages = new_stages(gen)
    stage = gen.stage(first_unfinished(gen) or gen.stages[-1].name)
    _time_out_stage(session, settings, gen, stage, f" at {stage.name}", after)
    return gen


def _time_out_stage(
    session: Session,
    settings: Settings,
    gen: Generation,
    stage: GenerationStage,
    where: str,
    after: After,
) -> None:
    """Fail ``stage`` for ``BFF_GENERATION_TIMEOUT``, with how long it ran, as
    any failed attempt (None: it never started), owing its paid work a stop
    (nothing will store what it makes): the beat's ``stops.resend_owed`` sends it."""
    error = (
        f"timed out after {_duration(settings.generation_timeout)}{where} (BFF_GENERATION_TIMEOUT)"
    )
    stage.duration_ms = elapsed_ms(stage)
    end_failed(session, settings, gen, stage, error, after, code="timeout")
    stops.owe(session, gen, sending=False)


def time_out_refine(
    session: Session, settings: Settings, generation_id: str, asked_before: datetime, after: After
) -> GenerationStage | None:
    """Fail a refine asked for after the fact (before ``asked_before``) that
    has not ended (its generation stays completed, and a new refine may be
    asked for); None: it ended, or was asked for again, meanwhile."""
    gen = lease.lock(session, generation_id)  # (SQLite: a refine asked again waits for us)
    if gen is None or not refining(gen) or not late_refine_overdue(gen, asked_before):
        return None
    stage = gen.stage(LATE_STAGE)
    _time_out_stage(session, settings, gen, stage, "", after)
    # Fence its copies off: one parked on a countdown, or working now, no
    # longer owns the stage, so it stops before paying for anything more.
    stage.task_id = None
    return stage


def cancel_late_refine(
    session: Session, settings: Settings, gen: Generation, after: After
) -> int | None:
    """Fail ``gen``'s refine asked for after it completed (a cancel of the
    completed generation: it stays completed), its copies fenced off as a
    timeout's are; the id of the stop its paid work is owed, to send once
    this commits."""
    stage = gen.stage(LATE_STAGE)
    stage.duration_ms = elapsed_ms(stage)
    end_failed(session, settings, gen, stage, "canceled while running", after)
    stage.task_id = None
    return stops.owe(session, gen)


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server asked."""
    delay = random.uniform(0.5, 1.0) * min(60.0, 2.0**attempt)
    return max(delay, retry_after or 0.0)


def _duration(seconds: float) -> str:
    """``15 min``, ``90 min``, ``40 s``: minutes when whole, else seconds."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
