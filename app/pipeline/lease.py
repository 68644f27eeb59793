"""A stage's lease and its fence.

The lease is the generation's progress clock (``updated_at``): every claim,
record, wait and checkpoint renews it, and a stage whose generation has been
quiet longer than the stage's stall timeout is presumed lost (``stalled``):
the dispatcher re-sends it and the next copy takes it over.

The fence keeps a copy that was taken over from paying: a checkpoint locks
the generation and goes on only while this copy's task id still owns the stage.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, selectinload

from app.domain.models import Generation, GenerationStage, utcnow
from app.domain.states import HOLDS, RESUMED, RETRY_AT, S_RUNNING, WAITING, ended_for
from app.pipeline.context import GenerationEnded, StageLeaseLost
from app.platform.config import Settings
from app.platform.db import Database, begin_for_update
from app.platform.db import unavailable as db_unavailable
from app.providers.base import prediction_ids

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"  # the runner's mark of a saved state in a stage's output
RUNNER_KEYS = (CHECKPOINT, *HOLDS)  # the runner's bookkeeping in a saved state
# Seconds a checkpoint or a payment waits out a database outage: what it
# records was usually just paid for (a prediction id, images, the payment),
# so it outlasts a managed database's failover (typically 30 s to 2 min), and
# ends inside a pipeline task's soft time limit (300 s, app/platform/queue.py).
CHECKPOINT_PATIENCE = 180.0
WAKE_UP = "wake-"  # the task id prefix of a delivery sent to wake a waiting stage
Also = Callable[[Session, Generation], None]  # more to write under a checkpoint's fence


def wake_up_task_id() -> str:
    return f"{WAKE_UP}{uuid.uuid4()}"


def is_wake_up(task_id: str | None) -> bool:
    """Only a wake-up takes a waiting stage from its parked copy: a stale or
    duplicate delivery taking it would leave two chains polling in turn."""
    return bool(task_id and task_id.startswith(WAKE_UP))


def lock(session: Session, generation_id: str) -> Generation | None:
    """The generation, locked FOR UPDATE, with its stages, as committed now."""
    begin_for_update(session)  # SQLite: its write lock before the read
    return session.scalars(LOCK, {"generation_id": generation_id}).one_or_none()


# Built once. The stages come in a second statement, run once the lock is
# ours: one that joined them would read them as they were when it began to
# wait (PostgreSQL re-reads only the locked row), and miss the claim or
# record of the copy it waited behind.
LOCK = (
    select(Generation)
    .where(Generation.id == bindparam("generation_id"))
    .options(selectinload(Generation.stages))
    .with_for_update()
    .execution_options(populate_existing=True)
)


def lock_stage(
    session: Session, generation_id: str, name: str
) -> tuple[Generation, GenerationStage | None] | None:
    """The generation, locked FOR UPDATE, and one of its stages, as committed
    once the lock is ours (as ``lock``); its other stages are not read."""
    begin_for_update(session)
    gen = session.scalars(LOCK_ROW, {"generation_id": generation_id}).one_or_none()
    if gen is None:
        return None
    params = {"generation_id": generation_id, "name": name}
    return gen, session.scalars(STAGE, params).one_or_none()


LOCK_ROW = (
    select(Generation)
    .where(Generation.id == bindparam("generation_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
STAGE = (
    select(GenerationStage)
    .where(
        GenerationStage.generation_id == bindparam("generation_id"),
        GenerationStage.name == bindparam("name"),
    )
    .execution_options(populate_existing=True)
)


def stalled(gen: Any, settings: Settings) -> bool:
    """No progress on this generation for longer than the stall timeout."""
    return (utcnow() - gen.updated_at).total_seconds() > settings.stall_timeout


@contextmanager
def heartbeat(
    db: Database, stage: GenerationStage, task_id: str | None, every: float
) -> Iterator[None]:
    """While the block runs, renew the generation's lease every ``every``
    seconds, for as long as this copy owns the running stage: a stage that
    works for minutes (a synchronous provider call, a big upload) is never
    taken for lost, so the stall timeout can be short."""
    done, gen_id, name = threading.Event(), stage.generation_id, stage.name

    def beat() -> None:
        while not done.wait(every):
            try:
                with db.Beats() as session, session.begin():
                    renew(session, gen_id, name, task_id)
            except Exception as exc:  # the next beat tries again; the lease says the rest
                log.warning("heartbeat of %s: %s", gen_id, type(exc).__name__)

    threading.Thread(target=beat, name=f"lease-{gen_id}", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def owns(stage: GenerationStage | None, task_id: str | None) -> bool:
    """This copy (``task_id``; None: a run outside Celery) still holds the
    running stage: not taken over, not fenced off by a timeout or a cancel."""
    running = stage is not None and stage.status == S_RUNNING
    return running and (task_id is None or stage.task_id == task_id)


def renew(session: Session, generation_id: str, name: str, task_id: str | None) -> bool:
    """One beat: renew the lease if this copy still owns the running stage,
    read once the generation's lock is ours (as the fences read it)."""
    gen, stage = lock_stage(session, generation_id, name) or (None, None)
    if not owns(stage, task_id):
        return False
    gen.updated_at = utcnow()
    return True


def checkpoint_of(stage: GenerationStage) -> dict[str, Any]:
    output = stage.output or {}
    return dict(output) if output.get(CHECKPOINT) else {}


def hop(seconds: float, settings: Settings) -> float:
    """The countdown for a wait of ``seconds``: at most half the stall timeout,
    so a waiting stage renews its lease before it could look lost."""
    return min(seconds, settings.stall_timeout / 2)


def retry_hold(stage: GenerationStage) -> float:
    """Seconds until a pending stage's retry is due (taken in hops when the
    provider asked for longer than half the stall timeout); 0 when due."""
    due = (stage.output or {}).get(RETRY_AT)
    if not due:
        return 0.0
    return max(0.0, (datetime.fromisoformat(due) - utcnow()).total_seconds())


def parked(stage: GenerationStage | None) -> dict[str, Any]:
    """The checkpoint of a stage parked on a countdown while a provider works
    (running, but no copy is working on it), else {}."""
    if stage is None or stage.status != S_RUNNING:
        return {}
    checkpoint = checkpoint_of(stage)
    return checkpoint if checkpoint.get(WAITING) else {}


def resuming(stage: GenerationStage) -> bool:
    """A running stage taken to resume its wait, whose copy has saved nothing
    since (its checkpoints drop the mark): one that only looked again."""
    return stage.status == S_RUNNING and bool((stage.output or {}).get(RESUMED))


def checkpointer(
    session: Session,
    generation_id: str,
    stage_id: int,
    task_id: str | None,
) -> Callable[[dict[str, Any]], None]:
    """Commit partial progress in the stage's session. A checkpoint usually
    records something just paid for (a prediction id), so a database outage
    is waited out (``patiently``) rather than lose it.
    ``also(session, generation)`` writes more under the fence, in the same
    transaction (and again if it is retried)."""

    def checkpoint(state: dict[str, Any], also: Also | None = None) -> None:
        save = partial(_save_checkpoint, session, generation_id, stage_id, task_id, state, also)
        patiently(session, save, "checkpoint")

    return checkpoint


def patiently(session: Session, step: Callable[[], None], what: str) -> None:
    """``step`` (a transaction that commits on ``session``), run again while
    the database is unavailable, for up to ``CHECKPOINT_PATIENCE`` seconds:
    what it records was usually just paid for. A lost lease is never waited out."""
    deadline, delay = time.monotonic() + CHECKPOINT_PATIENCE, 0.2
    while True:
        try:
            step()
            return
        except StageLeaseLost:
            session.rollback()
            raise
        except Exception as exc:
            session.rollback()
            if not db_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable, retrying in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def paying(
    checkpoint: Callable[[dict[str, Any]], None],
    cancel: Callable[[list[str]], object],
    saved: dict[str, Any],
) -> Callable[[dict[str, Any]], None]:
    """``checkpoint`` for a stage that pays for predictions (its state's
    ``predictions``, from ``saved`` on). One just paid for that it cannot save
    (the generation deleted, the stage taken over, the database gone past the
    checkpoint's patience) is canceled at once: no run will ever read it. A
    canceled generation's are saved first (``GenerationEnded``); the runner
    cancels those."""
    known = set(prediction_ids(saved))

    def save(state: dict[str, Any]) -> None:
        ids = prediction_ids(state)
        try:
            checkpoint(state)
        except GenerationEnded:
            raise
        except Exception:
            if lost := [i for i in ids if i not in known]:
                log.warning("canceling predictions nothing will read: %s", lost)
                try:
                    cancel(lost)
                except Exception:  # noqa: BLE001 - best effort, as every cancel
                    log.warning("could not cancel %s", lost, exc_info=True)
            raise
        known.update(ids)

    return save


def _save_checkpoint(
    session: Session,
    generation_id: str,
    stage_id: int,
    task_id: str | None,
    state: dict,
    also: Also | None,
) -> None:
    # Fence: lock the generation (first, as everyone who changes it does, so
    # two writers never wait on each other in opposite orders) and make sure
    # this copy still owns the stage. A copy that stalled (e.g. blocked while
    # Redis was down) and was taken over must not go on to pay for anything.
    gen = lock(session, generation_id)
    stage = next((s for s in gen.stages if s.id == stage_id), None) if gen else None
    if stage is None:
        raise StageLeaseLost("the generation was deleted")
    if task_id is not None and stage.task_id != task_id:
        raise StageLeaseLost(f"{stage.name} was taken over by {stage.task_id}")
    ended = ended_for(gen, stage.name)
    if stage.status != S_RUNNING and not ended:
        # Finished (or failed) by a copy it took over from, which came back:
        # a record leaves the stage's task id as it was, so the id alone passes.
        raise StageLeaseLost(f"{stage.name} was {stage.status} by another copy")
    if also is not None and not ended:
        also(session, gen)
    stage.output = {**state, CHECKPOINT: True}
    gen.updated_at = utcnow()  # progress: renews the lease
    session.commit()
    if ended:
        # Canceled meanwhile: a checkpoint comes right before a paid call (none
        # is made) or right after one (its ids are saved above, for the runner
        # to cancel: the cancel itself could not see them yet). A completed
        # generation's late refine is not ended by its generation's status.
        raise GenerationEnded(f"the generation was {gen.status} while {stage.name} worked")
