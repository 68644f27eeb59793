"""Run one stage of one generation and record it. The Celery tasks call
``run_stage`` and nothing else.

Three short transactions, so no row lock is held while a stage works:
1. claim: lock the generation; stop if it is final (canceled, failed) or the
   stage already finished (idempotent re-delivery); mark the stage running;
2. work: the stage function, in a session of its own;
3. record: lock again; write the output, timings and status in the same
   transaction as the stage's own rows (assets). A generation canceled
   meanwhile keeps its status and the chain stops.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import Database
from ..models import Generation, GenerationStage, utcnow
from ..states import (
    COMPLETED,
    FAILED,
    FINAL,
    PROCESSING,
    S_COMPLETED,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    S_SKIPPED,
    STAGE_DONE,
    set_stage_status,
    set_status,
)
from ..storage import Storage
from . import STAGE_FUNCS, STAGES
from .context import StageContext, StageFailed, StageTransient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    proceed: bool  # False: stop the chain here
    retry_in: float | None = None  # set: run this stage again after that many seconds

    @classmethod
    def stop(cls) -> Outcome:
        return cls(False)


CONTINUE = Outcome(True)


def _lock(session: Session, generation_id: str) -> Generation | None:
    return session.scalars(
        select(Generation)
        .where(Generation.id == generation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def first_unfinished(gen: Generation) -> str | None:
    for s in gen.stages:
        if s.status not in STAGE_DONE:
            return s.name
    return None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server asked."""
    delay = random.uniform(0.5, 1.0) * min(60.0, 2.0**attempt)
    return max(delay, retry_after or 0.0)


def fail(session: Session, gen: Generation, stage: GenerationStage, message: str) -> None:
    if stage.status != S_FAILED:
        set_stage_status(stage, S_FAILED)
    stage.error = message
    stage.finished_at = utcnow()
    if gen.status not in FINAL:
        set_status(gen, FAILED)
        gen.error_stage, gen.error_message = stage.name, message


def run_stage(
    db: Database,
    settings: Settings,
    storage: Storage,
    generation_id: str,
    name: str,
    task_id: str | None = None,
) -> Outcome:
    with db.session() as session:
        gen = _lock(session, generation_id)
        if gen is None or gen.status in FINAL:
            return Outcome.stop()
        stage = gen.stage(name)
        if stage.status in STAGE_DONE:
            return CONTINUE
        earlier = STAGES[: STAGES.index(name)]
        if any(gen.stage(s).status not in STAGE_DONE for s in earlier):
            # Out of order (a stale message): the chain for the unfinished stage owns this.
            log.warning("%s: %s delivered before earlier stages finished", generation_id, name)
            return Outcome.stop()
        set_status(gen, PROCESSING)
        set_stage_status(stage, S_RUNNING)
        stage.attempts += 1
        stage.started_at, stage.finished_at, stage.duration_ms = utcnow(), None, None
        stage.task_id, stage.error = task_id, None
        attempt = stage.attempts

    started = time.monotonic()
    error: str | None = None
    retry_in: float | None = None
    try:
        with db.session() as session:
            gen = session.get(Generation, generation_id)
            if gen is None:
                return Outcome.stop()
            result = STAGE_FUNCS[name](StageContext(session, gen, settings, storage))
            duration = round((time.monotonic() - started) * 1000)
            gen = _lock(session, generation_id)  # re-read status under the lock
            stage = gen.stage(name)
            set_stage_status(stage, S_SKIPPED if result.skipped else S_COMPLETED)
            stage.finished_at, stage.duration_ms, stage.output = utcnow(), duration, result.output
            gen.pipeline_data = {**(gen.pipeline_data or {}), name: result.output}
            gen.updated_at = utcnow()
            if gen.status in FINAL:
                return Outcome.stop()
            if name == STAGES[-1]:
                set_status(gen, COMPLETED)
            return CONTINUE
    except StageFailed as exc:
        error = str(exc)
    except StageTransient as exc:
        error = str(exc)
        if attempt < settings.stage_max_attempts:
            retry_in = backoff(attempt, exc.retry_after)
        else:
            error = f"gave up after {attempt} attempts: {error}"
    except Exception as exc:  # a bug or an unmapped dependency error: fail, visibly
        log.exception("%s: stage %s crashed", generation_id, name)
        error = f"internal error in {name}: {type(exc).__name__}"

    with db.session() as session:
        gen = _lock(session, generation_id)
        if gen is None:
            return Outcome.stop()
        stage = gen.stage(name)
        stage.duration_ms = round((time.monotonic() - started) * 1000)
        if retry_in is not None and gen.status not in FINAL:
            set_stage_status(stage, S_PENDING)
            stage.error = f"attempt {attempt} failed, retrying in {retry_in:.1f}s: {error}"
            return Outcome(True, retry_in)
        fail(session, gen, stage, error or "failed")
    return Outcome.stop()
