"""Feedback on a generation. Each user has at most one standing heart, outlier
and rating per generation (whichever image they name: the learner learns from
the generation's prompt, which its images share). A second heart or outlier
withdraws the first; a new rating replaces the standing one; comments add up.
Rows are never deleted: a withdrawn one gets ``removed_at`` and the learner
undoes what it taught (``app.pipeline.learning.apply_feedback``), so nothing
is learnt twice. Functions take the session and never commit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.models import STANDING_FEEDBACK, Generation, GenerationFeedback, utcnow

TOGGLES = ("heart", "outlier")


def state_of(rows: Iterable[tuple[str | None, int | None]]) -> dict[str, Any]:
    """The generation JSON's ``feedback`` from the standing rows' (type, rating), oldest first."""
    kinds = dict(rows)
    return {"heart": "heart" in kinds, "rating": kinds.get("rating"), "outlier": "outlier" in kinds}


def feedback_state(gen: Generation) -> dict[str, Any]:
    return state_of((f.feedback_type, f.rating) for f in gen.standing_feedback)


def give(
    session: Session,
    gen: Generation,
    user_id: int,
    kind: str,
    *,
    rating: int | None = None,
    comment: str | None = None,
    asset_id: int | None = None,
    meta: dict[str, Any] | None = None,
    key: str | None = None,
    req_hash: str | None = None,
) -> tuple[GenerationFeedback, bool, list[int]]:
    """Record ``kind`` of feedback. Returns the row the answer is about (the
    new one, or the withdrawn heart or outlier), whether it is new, and the
    rows whose learning must now be applied or undone. The request's
    Idempotency-Key and hash go on that row, as its maker's or its
    withdrawer's, so a retry finds the answer. Lock ``gen`` first, so two
    quick clicks take turns."""
    standing: list[GenerationFeedback] = []
    if kind in STANDING_FEEDBACK:  # rows from before withdrawal existed may be several
        standing = list(
            session.scalars(
                select(GenerationFeedback)
                .where(
                    GenerationFeedback.generation_id == gen.id,
                    GenerationFeedback.user_id == user_id,
                    GenerationFeedback.feedback_type == kind,
                    GenerationFeedback.removed_at.is_(None),
                )
                .order_by(GenerationFeedback.id)
            )
        )
    now = utcnow()
    for old in standing:
        old.removed_at = now
    session.expire(gen, ["standing_feedback"])  # feedback_state(gen) reads it afresh
    if standing and kind in TOGGLES:
        took = standing[-1]
        took.withdrawal_idempotency_key, took.withdrawal_request_hash = key, req_hash
        return took, False, [f.id for f in standing]
    fb = GenerationFeedback(
        generation_id=gen.id,
        asset_id=asset_id,
        user_id=user_id,
        feedback_type=kind,
        rating=rating,
        comment=comment,
        meta=meta or {},
        idempotency_key=key,
        request_hash=req_hash,
    )
    session.add(fb)
    session.flush()
    return fb, True, [*(f.id for f in standing), fb.id]
