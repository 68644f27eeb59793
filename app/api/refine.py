"""POST /api/generate/<id>/assets/<assetId>/refine: upscale and/or cut out one
image of a completed generation, after the fact. The generation stays
completed; its ``refine`` stage (added, or reset) runs as a small job of its
own on the same queues (``pipeline.refine``, queue ``generation``), shown in
its stages and on its event stream, and adds variant assets (a batch's
generation: at the batch's background priority; its batch stays finished,
as the generation stays completed). One refine at a
time per generation; what the refine costs is checked against the daily cap
now and again right before the paid call. An ``Idempotency-Key`` replays the
answer to the generation's latest refine asked with it (the same key with
another body is 409): a retried POST does not meet its own refine's 409."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Blueprint, g
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, object_session

from app.api.auth import load_user
from app.api.common import (
    asked_before,
    json_body,
    receive_body,
    refuse_while_stopping,
    request_key,
    services,
)
from app.api.errors import ApiError, invalid, not_found
from app.api.responses import GenerationOut, generation_path, respond
from app.api.schemas import RefineIn, parse
from app.domain import generations as svc
from app.domain import spend
from app.domain.models import Generation, GenerationAsset, GenerationStage, utcnow
from app.domain.quotas import count_rerun
from app.domain.spend import refusal
from app.domain.states import COMPLETED, LATE_REQUEST, LATE_STAGE, S_FAILED, S_PENDING, refining
from app.pipeline.lease import CHECKPOINT, checkpoint_of
from app.pipeline.refine import INHERITED, ops_for, oversize
from app.platform.queue import dispatch

log = logging.getLogger(__name__)
bp = Blueprint("refine", __name__, url_prefix="/api/generate")
bp.before_request(load_user)

REUSABLE = timedelta(minutes=50)  # a failed refine's predictions, read again within this
MAX_ID = 2**31 - 1  # asset ids are 32-bit integers: anything larger names no asset


def _asset(gen: Generation, raw_id: str) -> GenerationAsset:
    # isdecimal() alone admits other scripts' digits ("٣"), and isdigit() "²".
    digits = raw_id.isascii() and raw_id.isdecimal()
    asset_id = int(raw_id) if digits and int(raw_id) <= MAX_ID else None
    asset = next((a for a in gen.assets if a.id == asset_id), None)
    if asset is None:
        raise not_found("image")
    return asset


def _check(gen: Generation, asset: GenerationAsset, options: dict) -> float:
    """409 for what cannot be refined now, 422 for an engine not configured;
    returns what the refine may cost (USD)."""
    if gen.status != COMPLETED:
        raise ApiError(
            409, "conflict", f"only a completed generation can be refined; this one is {gen.status}"
        )
    if refining(gen):
        raise ApiError(409, "conflict", "a refine of this generation is already running")
    made = {(a.source_asset_id, (a.meta or {}).get("refine")) for a in gen.assets}
    todo = [op for op in ops_for(options) if (asset.id, op.key) not in made]
    if not todo:
        raise ApiError(409, "conflict", "this image already has the variants asked for")
    local, settings = gen.provider == "local", services().settings
    if why := next(filter(None, (oversize(asset, op, local, settings) for op in todo)), None):
        raise invalid("upscale", why, why)
    if local:
        return 0.0  # refined offline, free
    if not settings.replicate_api_token:
        why = "REPLICATE_API_TOKEN not configured (refine runs on Replicate)"
        raise invalid("settings.provider", why, why, "provider_unavailable")
    return sum(op.model.price for op in todo)


@bp.post("/<generation_id>/assets/<asset_id>/refine")
def refine(generation_id: str, asset_id: str):
    s = services()
    receive_body()
    with s.db.session() as session:
        gen = svc.get_owned(session, g.user_id, generation_id, lock=True)
        if gen is None:
            raise not_found()
        asset = _asset(gen, asset_id)
        payload = json_body()
        options = parse(RefineIn, payload).model_dump(exclude_none=True)
        key = request_key(payload)
        replay = asked_before(gen.pipeline_data, LATE_REQUEST, key)
        if not replay:
            estimate = _check(gen, asset, options)
            refuse_while_stopping(session, gen.id, "ask")  # (a timed-out refine's)
            count_rerun(session, s.settings, g.user_id)  # 429 over the rate, as a submit
            if estimate and (why := refusal(session, g.user_id, estimate)):
                raise ApiError(403, "budget_exceeded", why, {"estimate": round(estimate, 4)})
            _queue(gen, asset.id, options, key)
            stages = svc.stage_names(gen)
            in_batch = gen.batch_id is not None
    # A batch member's refine goes in the background, as its batch's stages did.
    if not replay and dispatch(
        s.celery, generation_id, LATE_STAGE, background=in_batch, stages=stages
    ):
        _mark_dispatched(generation_id)
    with s.db.session() as session:
        gen = svc.get_owned(session, g.user_id, generation_id)
        return respond(GenerationOut, gen, 202, {"Location": generation_path(generation_id)})


def _queue(gen: Generation, asset_id: int, options: dict, key: dict[str, str]) -> None:
    """The request (with its Idempotency-Key, if any), and its stage pending
    (added, or reset from the last refine)."""
    stage = next((st for st in gen.stages if st.name == LATE_STAGE), None)
    kept = _paid_for(object_session(gen), gen, stage) if stage is not None else None
    asked = {"assetId": asset_id, "askedAt": utcnow().isoformat(), **options, **key}
    gen.pipeline_data = {**(gen.pipeline_data or {}), LATE_REQUEST: asked}
    if stage is None:
        stage = svc.new_stage(LATE_STAGE)
        gen.stages.append(stage)
    stage.output = kept
    stage.status, stage.attempts, stage.error = S_PENDING, 0, None
    stage.started_at = stage.finished_at = stage.duration_ms = stage.task_id = None
    gen.updated_at = utcnow()  # a change clients see; the dispatcher's clock from now
    gen.dispatched_at = None  # set once the broker took it


def _paid_for(session: Session, gen: Generation, stage: GenerationStage) -> dict | None:
    """The variants the last refine made and paid for, if it failed lately:
    read again from their predictions, not made (and paid for) twice. Only
    its own (not those it was handed in turn: ``INHERITED``), and only while
    Replicate serves their outputs (an hour; its request bounds their age)."""
    saved = checkpoint_of(stage)
    asked = ((gen.pipeline_data or {}).get(LATE_REQUEST) or {}).get("askedAt")
    if stage.status != S_FAILED or not asked or not saved.get("predictions"):
        return None
    if utcnow() - datetime.fromisoformat(asked) >= REUSABLE:
        return None
    handed = set(saved.get(INHERITED) or [])
    paid = {
        key: pid
        for key, pid in saved["predictions"].items()
        if pid not in handed and spend.charged(session, gen.id, [[pid]]) > 0
    }
    return (
        {"predictions": paid, INHERITED: sorted(paid.values()), CHECKPOINT: True} if paid else None
    )


def _mark_dispatched(generation_id: str) -> None:
    # Without it the dispatcher sends the refine once its stall timeout passes.
    try:
        with services().db.session() as session:
            svc.touch_dispatched(session, generation_id)
    except SQLAlchemyError as exc:
        log.warning("could not mark the refine of %s dispatched: %s", generation_id, exc)
