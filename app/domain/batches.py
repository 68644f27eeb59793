"""The batches domain: create, read, list, count and finish batches (the
JSON clients see: ``app.api.batch_responses``). Functions take the session
and never commit; ``finish_if_done`` is the completion rule.

A batch's status is derived from its generations' statuses, never stored,
so a retry, a redispatch or a delete can never leave a counter wrong:
``canceled`` once a cancel was asked for, ``completed`` once every
generation is final (whatever each outcome), ``processing`` once one has
started, else ``pending``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from app.domain import paging
from app.domain.generations import OPEN_LATE_REFINE
from app.domain.models import Batch, Generation, utcnow
from app.domain.states import CANCELED, COMPLETED, FINAL, GENERATION_STATUSES, PENDING, PROCESSING
from app.platform.db import begin_for_update

BATCH_STATUSES = (PENDING, PROCESSING, COMPLETED, CANCELED)


@dataclass(frozen=True)
class BatchView:
    """A batch with what its generations say: what ``GET /api/batches/<id>`` shows."""

    batch: Batch
    counts: dict[str, int]
    cost: float

    @property
    def status(self) -> str:
        if self.batch.canceled_at is not None:
            return CANCELED
        # Counted from the rows there are: a member deleted on its own is no
        # longer waited for.
        if not self.counts[PENDING] + self.counts[PROCESSING]:
            return COMPLETED
        return PENDING if self.counts[PENDING] == sum(self.counts.values()) else PROCESSING


def create(session: Session, **columns: Any) -> Batch:
    batch = Batch(**columns)
    session.add(batch)
    return batch


def get_owned(session: Session, user_id: int, batch_id: str, lock: bool = False) -> Batch | None:
    q = select(Batch).where(Batch.id == batch_id, Batch.user_id == user_id)
    if lock:
        begin_for_update(session)
        q = q.with_for_update().execution_options(populate_existing=True)
    return session.scalars(q).one_or_none()


def _tallies(session: Session, batch_ids: list[str]) -> dict[str, tuple[dict[str, int], float]]:
    """Per batch: generations by status and their cost, in one grouped query
    (the batch_id index)."""
    rows = session.execute(
        select(Generation.batch_id, Generation.status, func.count(), func.sum(Generation.cost))
        .where(Generation.batch_id.in_(batch_ids))
        .group_by(Generation.batch_id, Generation.status)
    ).all()
    out = {bid: (dict.fromkeys(GENERATION_STATUSES, 0), 0.0) for bid in batch_ids}
    for bid, status, n, cost in rows:
        counts, total = out[bid]
        counts[status] = n
        out[bid] = counts, total + float(cost or Decimal(0))
    return out


def view(session: Session, batch: Batch) -> BatchView:
    counts, cost = _tallies(session, [batch.id])[batch.id]
    return BatchView(batch, counts, round(cost, 4))


def views(session: Session, batches: list[Batch]) -> list[BatchView]:
    tallies = _tallies(session, [b.id for b in batches])
    return [BatchView(b, tallies[b.id][0], round(tallies[b.id][1], 4)) for b in batches]


CURSOR_PATTERN = paging.cursor_pattern("bat")


def list_page(
    session: Session, user_id: int, limit: int, cursor: str | None = None
) -> tuple[list[BatchView], str | None]:
    """The user's batches, newest first (index user_id, created_at, id)."""
    q = select(Batch).where(Batch.user_id == user_id)
    rows, next_cursor = paging.page(session, q, Batch, limit, cursor, CURSOR_PATTERN)
    return views(session, rows), next_cursor


def lock_batch_of(session: Session, user_id: int, generation_id: str) -> str | None:
    """Lock the generation's batch, if it has one (its id), before the
    generation itself is locked: the order a batch's cancel and delete take
    them in. A retry reopens the batch in that transaction, so a finished
    batch never holds a running member (its cancel and delete skip those)."""
    batch_id = session.scalar(
        select(Generation.batch_id).where(
            Generation.id == generation_id, Generation.user_id == user_id
        )
    )
    if batch_id is not None:
        get_owned(session, user_id, batch_id, lock=True)
    return batch_id


def lock_unfinished(session: Session, batch_id: str) -> list[Generation]:
    """The batch's generations not final yet, locked."""
    return _lock_members(session, batch_id, Generation.status.not_in(FINAL))


def lock_refining(session: Session, batch_id: str) -> list[Generation]:
    """The batch's completed generations whose refine, asked for afterwards,
    has not ended, locked."""
    return _lock_members(session, batch_id, OPEN_LATE_REFINE)


def _lock_members(session: Session, batch_id: str, which: Any) -> list[Generation]:
    """Those of the batch's generations ``which`` selects, locked in id order
    (so two lockers of the same rows take them in the same order)."""
    return list(
        session.scalars(
            select(Generation)
            .where(Generation.batch_id == batch_id, which)
            .order_by(Generation.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def member_ids(session: Session, batch_id: str) -> list[tuple[str, int]]:
    """(generation id, user id) of every generation of the batch."""
    rows = session.execute(
        select(Generation.id, Generation.user_id).where(Generation.batch_id == batch_id)
    ).all()
    return [(gid, uid) for gid, uid in rows]


def reopen(session: Session, batch_id: str) -> None:
    """A member was retried: the batch is not done after all, and its
    completion (and webhook) comes again when the member ends."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(finished_at=None))


def finish_if_done(session: Session, batch_id: str) -> Batch | None:
    """The completion rule: under the batch row's lock, if every generation of
    the batch is final and the batch is not finished yet, mark it finished and
    return it (the caller records the webhook in the same transaction);
    else None. Called after each member's final transition has committed:
    the lock makes these checks take turns and each reads what the others
    committed, so the last member's check always sees the batch done."""
    begin_for_update(session)
    batch = session.scalars(
        select(Batch)
        .where(Batch.id == batch_id, Batch.finished_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if batch is None:
        return None
    busy = session.scalar(
        select(exists().where(Generation.batch_id == batch_id, Generation.status.not_in(FINAL)))
    )
    if busy:
        return None
    batch.finished_at = utcnow()
    return batch


def unfinished_batches(session: Session, older_than: timedelta, limit: int = 100) -> list[str]:
    """Batches not marked finished though every generation is final: a
    member's check was lost (its process died after the commit). For the sweep."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.finished_at.is_(None),
                Batch.created_at < utcnow() - older_than,
                ~exists().where(Generation.batch_id == Batch.id, Generation.status.not_in(FINAL)),
            )
            .limit(limit)
        )
    )
