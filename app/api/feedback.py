"""/api/generate/<id>/feedback: hearts, ratings, outliers and comments on a
generation's images (the rules: ``app.domain.feedback``). A POST with an
``Idempotency-Key`` replays the first answer and toggles nothing again."""

from __future__ import annotations

from flask import Blueprint, Response, g
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.auth import load_user
from app.api.common import (
    idempotency_key,
    json_body,
    receive_body,
    replay,
    request_hash,
    services,
)
from app.api.errors import ApiError, invalid
from app.api.generations import load_owned
from app.api.responses import FeedbackOut, respond
from app.api.schemas import FeedbackIn, parse
from app.domain.feedback import feedback_state, give
from app.domain.models import Generation, GenerationFeedback
from app.domain.states import CANCELED, FAILED
from app.platform.queue import LAST

bp = Blueprint("feedback", __name__, url_prefix="/api/generate")
bp.before_request(load_user)


def _answer(gen: Generation, fb: GenerationFeedback, created: bool) -> Response:
    return respond(FeedbackOut, (fb, feedback_state(gen)), 201 if created else 200)


def _replayed(
    session: Session, gen: Generation, key: str | None, req_hash: str | None
) -> Response | None:
    """A retry's answer: about the row the key's first request made (201) or
    withdrew (200), as that row and the generation's feedback are now.
    Nothing is toggled, and nothing sent to the learner, again."""
    if (made := replay(session, GenerationFeedback, key, req_hash)) is not None:
        return _answer(gen, made, True)
    cols = ("withdrawal_idempotency_key", "withdrawal_request_hash")
    took = replay(session, GenerationFeedback, key, req_hash, *cols)
    return _answer(gen, took, False) if took is not None else None


def _check_target(gen: Generation, body: FeedbackIn) -> None:
    if gen.status in (FAILED, CANCELED) and not gen.assets:
        raise ApiError(
            409,
            "conflict",
            f"generation is {gen.status} without images: there is nothing to give feedback on",
        )
    if body.assetId is not None and body.assetId not in {a.id for a in gen.assets}:
        raise invalid("assetId", "assetId is not an asset of this generation", "unknown asset")


@bp.post("/<generation_id>/feedback")
def feedback(generation_id: str):
    s = services()
    key: str | None = None
    req_hash: str | None = None
    receive_body()
    try:
        with s.db.session() as session:
            # Ownership first (404 before any 4xx); locked, so two quick clicks
            # (and a retry racing its original) take turns.
            gen = load_owned(session, generation_id, lock=True)
            payload = json_body()
            body = parse(FeedbackIn, payload)
            if (key := idempotency_key()) is not None:
                req_hash = request_hash(payload)
            if (prior := _replayed(session, gen, key, req_hash)) is not None:
                return prior
            _check_target(gen, body)
            fb, created, changed = give(
                session,
                gen,
                g.user_id,
                body.feedbackType,
                rating=body.rating,
                comment=body.comment,
                asset_id=body.assetId,
                meta=body.metadata,
                key=key,
                req_hash=req_hash,
            )
            resp = _answer(gen, fb, created)
    except IntegrityError:
        # The key's unique constraint: a concurrent request with it (on
        # another generation: one on this one waits for the lock) committed first.
        with s.db.session() as session:
            gen = load_owned(session, generation_id)
            if (prior := _replayed(session, gen, key, req_hash)) is not None:
                return prior
        raise
    for feedback_id in changed:  # the optimiser learns (and unlearns) in a task
        try:
            # Behind every stage: a stream of clicks must not delay anyone's job.
            s.celery.send_task("feedback.apply", args=(feedback_id,), priority=LAST)
        except Exception:
            pass  # the maintenance job applies feedback that was never sent
    return resp
