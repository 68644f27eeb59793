"""Learning from feedback: the ``feedback.apply`` task moves the scores of
the tokens a generation's final prompt used, for the ``optimize`` stage to
read, by an exponential moving average toward the feedback's reward (alpha
0.1; tokens the stage added while exploring move 1.5x as far): outlier 1.0,
heart 0.9, rating r -> (r - 1) / 4, comment none. Withdrawn feedback (a heart
taken back, a rating replaced) is undone by the step's inverse, once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.models import GenerationFeedback, GenerationStage, PromptTokenScore, utcnow
from app.pipeline.optimize import ALPHA, EXPLORE_WEIGHT, START, tokens
from app.platform.db import dialect_insert

REWARDS = {"outlier": 1.0, "heart": 0.9}


def reward_of(feedback_type: str, rating: int | None) -> float | None:
    if feedback_type == "rating" and rating is not None:
        return (rating - 1) / 4
    return REWARDS.get(feedback_type)


def _ensure_rows(session: Session, user_id: int, toks: list[str]) -> None:
    """Insert missing score rows without racing a concurrent feedback task."""
    insert = dialect_insert(session.get_bind().dialect.name)
    now = utcnow()
    rows = [
        {"user_id": user_id, "token": t, "score": START, "uses": 0, "updated_at": now} for t in toks
    ]
    session.execute(insert(PromptTokenScore).values(rows).on_conflict_do_nothing())


def apply_feedback(session: Session, feedback: GenerationFeedback) -> int:
    """Keep the token scores in line with this feedback row (locked): its
    reward is applied once, and undone once after the row is withdrawn
    (``removed_at``), so a heart taken back or a rating replaced teaches
    nothing. Returns the tokens moved (by the undo and the apply)."""
    if feedback.undone_at is not None:
        return 0
    if feedback.removed_at is not None:
        return _learn(session, feedback, undo=True) if feedback.applied_at else 0
    if feedback.applied_at is not None:
        return 0
    # What this row replaced is undone first, whichever task runs first: the
    # steps do not commute, and undo-then-apply gives the score of the new one alone.
    fb = GenerationFeedback
    replaced = session.scalars(
        select(fb)
        .where(
            fb.generation_id == feedback.generation_id,
            fb.user_id == feedback.user_id,
            fb.feedback_type == feedback.feedback_type,
            fb.applied_at.is_not(None),
            fb.removed_at.is_not(None),
            fb.undone_at.is_(None),
        )
        .with_for_update()
    ).all()
    undone = sum(_learn(session, old, undo=True) for old in replaced)
    return undone + _learn(session, feedback, undo=False)


def _learn(session: Session, feedback: GenerationFeedback, undo: bool) -> int:
    """One EMA step toward the row's reward over its generation's final
    prompt, or (``undo``) the step's inverse: exact unless feedback on another
    generation moved the same term in between (then within about 0.01 a step)."""
    now = utcnow()
    if undo:
        feedback.undone_at = now
    else:
        feedback.applied_at = now
    reward = reward_of(feedback.feedback_type, feedback.rating)
    opt = session.scalar(
        select(GenerationStage.output).where(
            GenerationStage.generation_id == feedback.generation_id,
            GenerationStage.name == "optimize",
        )
    )
    toks = tokens((opt or {}).get("finalPrompt", ""))
    if reward is None or not toks:
        feedback.undone_at = now  # it moved nothing, so there is nothing to undo
        return 0
    explored = (
        {t.lower() for t in opt.get("addedTokens", [])} if opt.get("mode") == "explore" else set()
    )
    _ensure_rows(session, feedback.user_id, toks)
    rows = session.scalars(
        select(PromptTokenScore)
        .where(PromptTokenScore.user_id == feedback.user_id, PromptTokenScore.token.in_(toks))
        .with_for_update()  # serialise concurrent updates of the same user's tokens
    )
    for row in rows:
        step = ALPHA * (EXPLORE_WEIGHT if row.token in explored else 1.0)  # < 1
        if undo:
            row.score = min(1.0, max(0.0, (row.score - step * reward) / (1 - step)))
            row.uses = max(0, (row.uses or 0) - 1)
        else:
            row.score = row.score + step * (reward - row.score)
            row.uses = (row.uses or 0) + 1
    return len(toks)
