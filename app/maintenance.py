"""Periodic maintenance (beat): nothing accepted is ever lost.

- Generations committed but never handed to the broker (it was down at
  submit) are dispatched from their first unfinished stage.
- Feedback whose optimiser task never ran is applied.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlalchemy import select

from .db import Database
from .models import Generation, GenerationFeedback, utcnow
from .pipeline.optimize import apply_feedback
from .pipeline.runner import first_unfinished
from .queue import dispatch
from .states import PENDING

UNDISPATCHED_GRACE = timedelta(seconds=10)


def redispatch_stalled(db: Database, celery_app: Celery, limit: int = 200) -> int:
    cutoff = utcnow() - UNDISPATCHED_GRACE
    with db.session() as session:
        rows = session.scalars(
            select(Generation)
            .where(
                Generation.status == PENDING,
                Generation.dispatched_at.is_(None),
                Generation.updated_at < cutoff,
            )
            .order_by(Generation.created_at)
            .limit(limit)
        ).all()
        todo = [(g.id, first_unfinished(g)) for g in rows]
    sent = 0
    for gen_id, stage in todo:
        if stage and dispatch(celery_app, gen_id, stage):
            with db.session() as session:
                gen = session.get(Generation, gen_id)
                gen.dispatched_at = utcnow()
            sent += 1
    return sent


def apply_one_feedback(db: Database, feedback_id: int) -> int:
    with db.session() as session:
        fb = session.get(GenerationFeedback, feedback_id)
        return apply_feedback(session, fb) if fb else 0


def apply_pending_feedback(db: Database, limit: int = 500) -> int:
    cutoff = utcnow() - UNDISPATCHED_GRACE
    with db.session() as session:
        ids = session.scalars(
            select(GenerationFeedback.id)
            .where(GenerationFeedback.applied_at.is_(None), GenerationFeedback.created_at < cutoff)
            .limit(limit)
        ).all()
    for fid in ids:
        apply_one_feedback(db, fid)
    return len(ids)
