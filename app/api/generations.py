"""/api/generate: submit, read, list, cancel, retry, delete, feedback."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Blueprint, g, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import events
from .. import generations as svc
from ..auth import load_user
from ..config import PROVIDER_KEY_VARS
from ..errors import ApiError, not_found
from ..models import Generation, GenerationAsset, GenerationFeedback, Persona, new_id
from ..pipeline.route import exclusion, routing_request
from ..providers.cancel import cancel_remote
from ..queue import dispatch
from ..quotas import check_submission
from ..schemas import FeedbackIn, ImageSubmit, PromptSubmit
from ..states import FINAL, GENERATION_STATUSES, IllegalTransition
from ..storage import StorageError, generation_prefix
from ..webhooks import submit_url_problem
from .common import check_user_id, int_arg, json_body, services
from .uploads import read_image

bp = Blueprint("generations", __name__, url_prefix="/api/generate")
bp.before_request(load_user)


def _accepted(gen_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    link = f"/api/generate/{gen_id}"
    return ({"id": gen_id, "status": "pending", "links": {"self": link}}, 202, {"Location": link})


def _request_hash(payload: dict[str, Any], image_digest: str | None = None) -> str:
    canon = json.dumps(
        {"path": request.path, "body": payload, "image": image_digest}, sort_keys=True, default=str
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 characters")
    return key


def _replay(session, key: str | None, req_hash: str):
    if key is None:
        return None
    prior = session.scalar(
        select(Generation).where(Generation.user_id == g.user_id, Generation.idempotency_key == key)
    )
    if prior is None:
        return None
    if prior.request_hash != req_hash:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request",
        )
    return _accepted(prior.id)


def _check_submit(session, body: PromptSubmit | ImageSubmit) -> None:
    check_user_id(body.userId)
    check_submission(session, services().settings, g.user_id)
    settings = body.settings.model_dump()
    provider, config = body.settings.provider, services().settings
    if provider != "auto":
        # The missing key first: it is the cause a user can act on.
        var = PROVIDER_KEY_VARS.get(provider)
        why = (
            f"{var} not configured"
            if var and not config.provider_key(provider)
            else exclusion(provider, routing_request(settings), config)
        )
        if why:
            raise ApiError(
                422,
                "provider_unavailable",
                f"provider {provider} cannot be used: {why}",
                [{"field": "settings.provider", "message": why}],
            )
    if (
        body.personaId
        and session.scalar(
            select(Persona.id).where(Persona.id == body.personaId, Persona.user_id == g.user_id)
        )
        is None
    ):
        raise ApiError(
            422,
            "validation_error",
            "personaId does not name one of your personas",
            [{"field": "personaId", "message": "unknown persona"}],
        )
    if body.webhookUrl and (why := submit_url_problem(body.webhookUrl, services().settings)):
        raise ApiError(
            422,
            "validation_error",
            f"webhookUrl {why}",
            [{"field": "webhookUrl", "message": why}],
        )


def _submit(
    body: PromptSubmit | ImageSubmit,
    mode: str,
    req_hash: str,
    upload: tuple[bytes, str, str] | None = None,
):
    s = services()
    key = _idempotency_key()
    gen_id = new_id("gen")
    input_key = None
    # One pooled connection (one checkout and pre-ping) for the durable insert
    # and, after the enqueue, the relaxed dispatched mark.
    with s.db.connection() as conn:
        try:
            with s.db.session(conn=conn) as session:
                if (replay := _replay(session, key, req_hash)) is not None:
                    return replay
                _check_submit(session, body)
                if upload is not None:
                    data, ctype, ext = upload
                    input_key = f"{generation_prefix(g.user_id, gen_id)}input.{ext}"
                    try:
                        s.storage.put(input_key, data, ctype)
                    except StorageError:
                        raise ApiError(
                            503,
                            "service_unavailable",
                            "storage is unavailable",
                            headers={"Retry-After": "5"},
                        ) from None
                svc.create(
                    session,
                    user_id=g.user_id,
                    mode=mode,
                    generation_id=gen_id,
                    settings=body.settings.model_dump(),
                    prompt=body.prompt,
                    negative_prompt=body.negativePrompt,
                    persona_id=body.personaId,
                    vlt_spec=getattr(body, "vltSpec", None),
                    webhook_url=body.webhookUrl,
                    idempotency_key=key,
                    request_hash=req_hash,
                    input_key=input_key,
                )
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key committed first.
            if input_key:
                s.storage.delete_prefix(generation_prefix(g.user_id, gen_id))
            with s.db.session(conn=conn) as session:
                if (replay := _replay(session, key, req_hash)) is not None:
                    return replay
            raise
        if dispatch(s.celery, gen_id):
            # Losing this mark only makes the dispatcher send the chain again,
            # which the runner's claim de-duplicates: no need to wait for the flush.
            with s.db.session(durable=False, conn=conn) as session:
                svc.touch_dispatched(session, gen_id)
        return _accepted(gen_id)


@bp.post("/from-prompt")
def from_prompt():
    payload = json_body()
    body = PromptSubmit.model_validate(payload)
    return _submit(body, "prompt", _request_hash(payload))


@bp.post("/from-image")
def from_image():
    s = services().settings
    if request.is_json:
        payload = json_body()
        body = ImageSubmit.model_validate(payload)
        if body.vltSpec is None:
            raise ApiError(
                422,
                "validation_error",
                "send an image file or a vltSpec",
                [{"field": "vltSpec", "message": "required without an image"}],
            )
        return _submit(body, "image", _request_hash(payload))
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with an 'image' file, or JSON with a vltSpec",
        )
    file = request.files.get("image")
    if file is None:
        raise ApiError(
            422,
            "validation_error",
            "the 'image' file field is required",
            [{"field": "image", "message": "required"}],
        )
    fields: dict[str, Any] = {k: v for k, v in request.form.items() if k != "settings"}
    if "settings" in request.form:
        try:
            fields["settings"] = json.loads(request.form["settings"])
        except ValueError:
            raise ApiError(400, "malformed_json", "the settings field is not valid JSON") from None
    body = ImageSubmit.model_validate(fields)
    upload = read_image(file, s.max_upload_bytes, s.max_image_pixels)
    digest = hashlib.sha256(upload[0]).hexdigest()
    return _submit(body, "image", _request_hash(fields, digest), upload)


def _load(session, generation_id: str, lock: bool = False) -> Generation:
    gen = svc.get_owned(session, g.user_id, generation_id, lock=lock)
    if gen is None:
        raise not_found()
    return gen


@bp.get("/<generation_id>")
def show(generation_id: str):
    # One statement, so an autocommit read: no BEGIN/COMMIT round trips.
    with services().db.read() as session:
        body = svc.read_owned_json(session, g.user_id, generation_id)
    if body is None:
        raise not_found()
    headers = {} if body["status"] in FINAL else {"Retry-After": "1"}
    return body, 200, headers


@bp.get("")
def index():
    limit = int_arg("limit", 20, 1, 100)
    status = request.args.get("status")
    if status is not None and status not in GENERATION_STATUSES:
        raise ApiError(
            422,
            "validation_error",
            f"status must be one of {', '.join(GENERATION_STATUSES)}",
            [{"field": "status", "message": "unknown status"}],
        )
    with services().db.session() as session:
        try:
            rows, cursor = svc.list_page(
                session, g.user_id, limit, request.args.get("cursor"), status
            )
        except ValueError:
            raise ApiError(400, "bad_request", "cursor is not valid") from None
        return {"items": [svc.to_json(r) for r in rows], "nextCursor": cursor}


def _running_tasks(gen: Generation) -> list[str]:
    """Call inside the session: the stages may not be loaded yet."""
    return [st.task_id for st in gen.stages if st.status == "running" and st.task_id]


def _revoke_running(gen: Generation, ids: list[str]) -> None:
    """Best effort: the stage guard already stops every later stage. ``gen``'s
    stages must have been loaded inside the session (``_running_tasks``)."""
    cancel_remote(services().settings, gen)  # a running Replicate prediction, too
    if ids:
        try:
            services().celery.control.revoke(ids)
        except Exception:  # broker down: the database status still stops the chain
            pass


@bp.post("/<generation_id>/cancel")
def cancel(generation_id: str):
    with services().db.session() as session:
        gen = _load(session, generation_id, lock=True)
        try:
            svc.cancel(gen)
        except IllegalTransition:
            raise ApiError(409, "conflict", f"generation is already {gen.status}") from None
        running = _running_tasks(gen)
    _revoke_running(gen, running)
    events.generation_final(services().settings, generation_id, gen.status)
    with services().db.session() as session:
        return svc.to_json(_load(session, generation_id))


@bp.post("/<generation_id>/retry")
def retry(generation_id: str):
    s = services()
    with s.db.session() as session:
        gen = _load(session, generation_id, lock=True)
        try:
            first = svc.prepare_retry(gen)
        except IllegalTransition:
            raise ApiError(
                409, "conflict", f"only failed generations can be retried; this one is {gen.status}"
            ) from None
    if dispatch(s.celery, generation_id, first):
        with s.db.session() as session:
            svc.touch_dispatched(session, generation_id)
    with s.db.session() as session:
        return svc.to_json(_load(session, generation_id)), 202


@bp.delete("/<generation_id>")
def delete(generation_id: str):
    s = services()
    with s.db.session() as session:
        gen = _load(session, generation_id, lock=True)
        was_running = not svc.is_final(gen)
        if was_running:
            svc.cancel(gen)
        running, prefix = _running_tasks(gen), generation_prefix(gen.user_id, gen.id)
    _revoke_running(gen, running)
    if was_running:
        events.generation_final(s.settings, generation_id, gen.status)
    try:
        s.storage.delete_prefix(prefix)
    except StorageError:
        raise ApiError(
            503,
            "service_unavailable",
            "storage is unavailable; try again",
            headers={"Retry-After": "5"},
        ) from None
    with s.db.session() as session:
        gen = _load(session, generation_id, lock=True)
        session.delete(gen)
    return "", 204


@bp.post("/<generation_id>/feedback")
def feedback(generation_id: str):
    s = services()
    with s.db.session() as session:
        gen = _load(session, generation_id)  # ownership first: 404 before any 4xx
        body = FeedbackIn.model_validate(json_body())
        if (
            body.assetId is not None
            and session.scalar(
                select(GenerationAsset.id).where(
                    GenerationAsset.id == body.assetId, GenerationAsset.generation_id == gen.id
                )
            )
            is None
        ):
            raise ApiError(
                422,
                "validation_error",
                "assetId is not an asset of this generation",
                [{"field": "assetId", "message": "unknown asset"}],
            )
        fb = GenerationFeedback(
            generation_id=gen.id,
            asset_id=body.assetId,
            user_id=g.user_id,
            feedback_type=body.feedbackType,
            rating=body.rating,
            comment=body.comment,
            meta=body.metadata or {},
        )
        session.add(fb)
        session.flush()
        out = {
            "id": fb.id,
            "generationId": gen.id,
            "assetId": fb.asset_id,
            "feedbackType": fb.feedback_type,
            "rating": fb.rating,
            "comment": fb.comment,
            "createdAt": svc.iso(fb.created_at),
        }
    try:  # the optimiser learns in a task, not in the request
        s.celery.send_task("feedback.apply", args=(out["id"],))
    except Exception:
        pass  # the maintenance job applies feedback that was never sent
    return out, 201
