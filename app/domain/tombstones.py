"""Submissions the rate limit counts that no generation row shows
(``submission_tombstones``).

The submission rate (``quotas.check_submission``) counts the user's
generations created in the window. Counted from those rows alone, a client
could submit up to the limit, delete, and submit again at once. So a delete
leaves a tombstone for each generation it removes that the window still
counts (a batch's members one each, as at submit): the user and when the
generation was made, nothing else, since a delete is for privacy. A retry
and a refine queue (paid) work again for a generation made before, whose
row shows only when it was made: each leaves one too, the user and when it
was asked (``record_rerun``). The rate counts tombstones as it counts
generations, until they leave the window; the maintenance beat forgets
them then (``prune``). Submits add nothing here (their rows count), and the
rate's one statement reads both tables through their (user_id, created_at)
indexes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Session

from app.domain.models import Base, Generation, utcnow
from app.platform.config import Settings
from app.platform.db import UtcDateTime, db_time

# A table without a key of its own: an id would be one more fact kept about a deletion.
TOMBSTONES = Table(
    "submission_tombstones",
    Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_submission_tombstones_user_created", "user_id", "created_at"),
)


def window_start(session: Session, settings: Settings, now: datetime | None = None) -> datetime:
    """When the submission rate's window (as of ``now``) began, as the database compares."""
    _, window = settings.submit_rate_limit
    return db_time(session, (now or utcnow()) - timedelta(seconds=window))


def record_deleted(session: Session, settings: Settings, deleted: ColumnElement[bool]) -> None:
    """In the delete's transaction, before its DELETE: a tombstone for each
    generation ``deleted`` selects that the rate window still counts (one
    statement, whatever their number). Nothing while the rate is off.

    The rows are locked as they are read (the DELETE would lock them next),
    in id order as every locker of many generations takes them: a member
    deleted on its own while its batch is deleted is then buried by
    whichever delete removes it, not by both."""
    limit, _ = settings.submit_rate_limit
    if limit <= 0:
        return
    in_window = (
        select(Generation.user_id, Generation.created_at)
        .where(deleted, Generation.created_at >= window_start(session, settings))
        .order_by(Generation.id)
        .with_for_update()
    )
    session.execute(insert(TOMBSTONES).from_select(["user_id", "created_at"], in_window))


def record_rerun(session: Session, user_id: int) -> None:
    """In a retry's or a refine's transaction: one more counted in the window."""
    session.execute(insert(TOMBSTONES).values(user_id=user_id, created_at=utcnow()))


def prune(session: Session, settings: Settings) -> int:
    """Forget the tombstones the window no longer counts; returns how many.
    (No index leads with created_at: the table holds one window's deletes.)"""
    before = window_start(session, settings)
    return session.execute(delete(TOMBSTONES).where(TOMBSTONES.c.created_at < before)).rowcount
