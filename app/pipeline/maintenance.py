"""Periodic maintenance (beat): nothing accepted is ever lost.

- ``redispatch_stalled``: a generation never handed to the broker, or silent
  past its stage's stall timeout, is sent again from its first unfinished
  stage (a completed one whose late refine stalled: from ``refine``). The
  submit writes ``dispatched_at`` with the row and clears it when the broker
  refuses the chain, so one without it is sent after
  ``UNDISPATCHED_GRACE``; a process that died between the commit and the send
  leaves it set, and the stall rule sends it. A batch's generations too.
- ``expire_overdue``: a generation past its deadline fails with code
  ``timeout`` at the stage it was in; its provider predictions are canceled.
  A refine asked for after the fact gets the same time (the generation
  stays completed; only the refine fails).
- ``apply_pending_feedback``: feedback whose optimiser task never ran.
- ``end_abandoned_stages``: a canceled generation's stage left running by a
  worker that died as the cancel came.
- ``forget_tombstones``: deleted submissions the rate limit no longer counts
  (``app.domain.tombstones``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import and_, or_, select, update

from app.domain import tombstones
from app.domain.generations import (
    OPEN_LATE_REFINE,
    first_unfinished,
    give_up_canceled,
    late_refine_overdue,
    stage_names,
    stage_status,
)
from app.domain.models import Generation, GenerationFeedback, GenerationStage, utcnow
from app.domain.states import (
    CANCELED,
    PENDING,
    PROCESSING,
    S_RUNNING,
)
from app.pipeline.endings import time_out, time_out_refine
from app.pipeline.learning import apply_feedback
from app.pipeline.lease import stalled
from app.pipeline.runner import transaction
from app.platform.config import Settings
from app.platform.db import Database, begin_for_update
from app.platform.queue import dispatch
from app.platform.redis import client

UNDISPATCHED_GRACE = timedelta(seconds=10)
# A feedback task waits behind every stage (priority LAST): only this late is it lost.
FEEDBACK_GRACE = timedelta(minutes=5)
ABANDONED_HORIZON = timedelta(hours=1)  # how far back ``end_abandoned_stages`` looks
OUTAGE_KEY = "bff:maintenance:db-unavailable"
log = logging.getLogger(__name__)
_local_outage: dict[str, float] = {}  # without Redis: this process's own observation


def note_db_outage(settings: Settings) -> None:
    """A worker saw the database unavailable. Every live stage then looks
    stalled (none could renew its lease), though their owners are only waiting
    for the database; taking them over would re-run work in flight, e.g.
    create a prediction whose id the owner is still trying to save."""
    now = time.time()
    _local_outage["at"] = now
    if settings.redis_url:
        try:
            client(settings.redis_url).set(OUTAGE_KEY, str(now), ex=_hold(settings) * 2)
        except Exception:  # noqa: BLE001 - best effort; the local note still holds
            pass


def db_outage_recent(settings: Settings) -> bool:
    """The database was seen unavailable less than a stall timeout ago."""
    seen = _local_outage.get("at", 0.0)
    if settings.redis_url:
        try:
            seen = max(seen, float(client(settings.redis_url).get(OUTAGE_KEY) or 0))
        except Exception:  # noqa: BLE001
            pass
    return time.time() - seen < _hold(settings)


def _hold(settings: Settings) -> int:
    return int(settings.stall_timeout) + 1


def redispatch_stalled(
    db: Database, celery_app: Celery, settings: Settings, limit: int = 200
) -> int:
    """Re-send every unfinished generation that is not making progress: never
    handed to the broker, or silent past its current stage's stall timeout
    (worker killed, broker restarted empty). The runner's lease keeps a
    stage that is in fact still running from starting twice."""
    now = utcnow()
    quiet_since = now - timedelta(
        seconds=min(settings.stall_timeout, UNDISPATCHED_GRACE.total_seconds())
    )
    todo: list[tuple[str, str, bool, tuple[str, ...]]] = []
    owners_may_be_waiting = db_outage_recent(settings)
    with db.session() as session:
        # Two indexed looks (an OR of them would read every generation): the
        # unfinished ones, and completed ones with an open late refine.
        rows = sorted(
            (
                gen
                for look in (Generation.status.in_((PENDING, PROCESSING)), OPEN_LATE_REFINE)
                for gen in session.scalars(
                    select(Generation)
                    .where(look, Generation.updated_at < quiet_since)
                    .order_by(Generation.updated_at)
                    .limit(limit)
                )
            ),
            key=lambda gen: gen.updated_at,
        )[:limit]
        for gen in rows:
            stage = first_unfinished(gen)
            if stage is None:
                continue
            never_sent = gen.status == PENDING and gen.dispatched_at is None
            if owners_may_be_waiting and stage_status(gen, stage) == S_RUNNING:
                continue  # give its owner a stall timeout to resume after the outage
            if never_sent or (stalled(gen, settings) and not _sent_within(gen, now, settings)):
                todo.append((gen.id, stage, gen.batch_id is not None, stage_names(gen)))
    sent = 0
    for gen_id, stage, in_batch, names in todo:
        # A batch's generation goes back in the background, as its batch sent it.
        if dispatch(celery_app, gen_id, stage, background=in_batch, stages=names):
            with db.session() as session:
                # updated_at is kept as it is (its onupdate would renew it): it
                # is the stage's lease. Renewing it here made the copy just sent
                # find the dead stage "alive" and stop, so only the broker's
                # visibility timeout ever recovered from a killed worker.
                session.execute(
                    update(Generation)
                    .where(Generation.id == gen_id)
                    .values(dispatched_at=utcnow(), updated_at=Generation.updated_at)
                )
            log.warning("re-dispatched %s from %s", gen_id, stage)
            sent += 1
    return sent


def _sent_within(gen: Generation, now: datetime, settings: Settings) -> bool:
    """Sent after the last stage activity, and recently: that copy is probably
    still queued, so do not pile up more. Recently is the stall timeout, or,
    if longer, as long as the generation had been quiet when it was sent: a
    copy not picked up is sent again after 30 s, 60 s, 120 s, ..., so a long
    backlog (a batch's members wait their turn) is not flooded with copies."""
    if gen.dispatched_at is None:
        return False
    sent = gen.dispatched_at
    activity = [t for s in gen.stages for t in (s.started_at, s.finished_at) if t]
    if activity and max(activity) >= sent:  # picked up since
        return False
    quiet_then = (sent - gen.updated_at).total_seconds()
    return (now - sent).total_seconds() < max(settings.stall_timeout, quiet_then)


def expire_overdue(db: Database, settings: Settings, limit: int = 100) -> int:
    """Fail every generation past its deadline, and every refine asked for
    after the fact that has had as long; returns how many of both."""
    now = utcnow()
    created_before = now - timedelta(seconds=settings.generation_timeout)
    with db.session() as session:
        ids = session.scalars(
            select(Generation.id)
            .where(
                Generation.status.in_((PENDING, PROCESSING)),
                or_(
                    Generation.deadline_at < now,
                    and_(Generation.deadline_at.is_(None), Generation.created_at < created_before),
                ),
            )
            .limit(limit)
        ).all()
    expired = 0
    for gen_id in ids:
        with db.Session() as session:
            expired += transaction(session, time_out, settings, gen_id) is not None
    return expired + expire_late_refines(db, settings, created_before, limit)


def end_abandoned_stages(db: Database, settings: Settings, limit: int = 100) -> int:
    """Fail the stage a canceled generation still shows running once its
    copy has been silent a stall timeout: its worker died as the cancel came
    (a live copy ends its stage at its next checkpoint or record, and its
    heartbeat keeps the generation's clock fresh till then). Canceled in the
    last ``ABANDONED_HORIZON`` only: a look at a few rows, not all history."""
    if db_outage_recent(settings):  # their owners may only be waiting for the database
        return 0
    now = utcnow()
    silent = (
        Generation.status == CANCELED,
        Generation.updated_at < now - timedelta(seconds=settings.stall_timeout),
    )
    with db.session() as session:
        ids = session.scalars(
            select(Generation.id)
            .where(
                *silent,
                Generation.updated_at > now - ABANDONED_HORIZON,
                Generation.stages.any(GenerationStage.status == S_RUNNING),
            )
            .limit(limit)
        ).all()
    ended = 0
    for gen_id in ids:  # one at a time, each under its own lock, read again
        with db.session() as session:
            begin_for_update(session)
            gen = session.scalars(
                select(Generation).where(Generation.id == gen_id, *silent).with_for_update()
            ).one_or_none()
            for stage in gen.stages if gen is not None else ():
                if stage.status == S_RUNNING:
                    give_up_canceled(stage)
                    ended += 1
    return ended


def expire_late_refines(
    db: Database, settings: Settings, asked_before: datetime, limit: int = 100
) -> int:
    """Fail every refine asked for after the fact before ``asked_before`` and
    not ended: the generation stays completed and may be refined again (one
    left running forever would refuse every later refine). Its predictions
    are canceled. Returns how many."""
    with db.read() as session:
        rows = session.scalars(
            select(Generation).where(OPEN_LATE_REFINE).order_by(Generation.updated_at).limit(limit)
        ).all()
        ids = [gen.id for gen in rows if late_refine_overdue(gen, asked_before)]
    expired = 0
    for gen_id in ids:
        with db.Session() as session:
            stage = transaction(session, time_out_refine, settings, gen_id, asked_before)
            if stage is not None:
                log.warning("timed out the refine of %s", gen_id)
                expired += 1
    return expired


def apply_one_feedback(db: Database, feedback_id: int) -> int:
    with db.session() as session:
        fb = session.get(GenerationFeedback, feedback_id, with_for_update=True)
        return apply_feedback(session, fb) if fb else 0


def apply_pending_feedback(db: Database, limit: int = 500) -> int:
    """Feedback whose task was lost: rows never applied, and withdrawn rows
    never undone (applied here, in the maintenance task: at the queue's front)."""
    cutoff = utcnow() - FEEDBACK_GRACE
    fb = GenerationFeedback
    with db.session() as session:
        ids = session.scalars(
            select(fb.id)
            .where(
                fb.undone_at.is_(None),
                or_(
                    and_(fb.applied_at.is_(None), fb.removed_at.is_(None), fb.created_at < cutoff),
                    and_(fb.applied_at.is_not(None), fb.removed_at < cutoff),
                ),
            )
            .limit(limit)
        ).all()
    for fid in ids:
        apply_one_feedback(db, fid)
    return len(ids)


def forget_tombstones(db: Database, settings: Settings) -> int:
    """Delete the tombstones of deleted submissions that have left the rate
    window (a few rows: only deletes inside a window write them)."""
    with db.session() as session:
        return tombstones.prune(session, settings)
