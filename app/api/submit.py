"""POST /api/generate/from-prompt and /from-image: validate, authorise, store
the row (and the upload) in one transaction, then enqueue; answer 202 at once.
An ``Idempotency-Key`` replays the first answer; the same key with another
body is 409."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from flask import Blueprint, Response, g, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.api.auth import load_user
from app.api.batch_schemas import parse_or_hint
from app.api.common import (
    Services,
    Upload,
    idempotency_key,
    json_body,
    parse_json,
    replay,
    request_hash,
    services,
)
from app.api.errors import ApiError, invalid, service_unavailable, upload_limit
from app.api.responses import AcceptedOut, generation_path, respond
from app.api.schemas import FORM_FIELDS, ImageSubmit, PromptSubmit, SpecSubmit, parse
from app.api.uploads import read_image
from app.domain import generations as svc
from app.domain.models import Generation, Persona, new_id, utcnow
from app.domain.quotas import check_submission
from app.pipeline import refine_wanted, stages_for
from app.pipeline.route import estimate, exclusion, routing_request
from app.platform.queue import dispatch
from app.platform.storage import StorageError, generation_prefix
from app.webhooks import submit_url_problem

log = logging.getLogger(__name__)
bp = Blueprint("submit", __name__, url_prefix="/api/generate")
bp.before_request(load_user)

Body = PromptSubmit | ImageSubmit  # SpecSubmit is an ImageSubmit


def _accepted(gen_id: str) -> Response:
    return respond(AcceptedOut, {"id": gen_id}, 202, {"Location": generation_path(gen_id)})


def _spec(body: Body) -> dict[str, Any] | None:
    return body.vltSpec.model_dump(mode="json") if isinstance(body, SpecSubmit) else None


def check_request(
    body: Body, settings: dict[str, Any], url_problem: Callable[[str], str | None] | None = None
) -> None:
    """The checks that need no database. ``url_problem``: the webhookUrl's
    check (a batch asks each of its URLs once, however many items share it)."""
    # The seed's clients send userId: it must be the key's own user.
    if body.userId is not None and str(body.userId) != str(g.user_id):
        raise ApiError(403, "forbidden", "userId does not match the API key's user")
    config = services().settings
    url_problem = url_problem or partial(submit_url_problem, settings=config)
    provider = body.settings.provider
    if provider != "auto":
        # (A missing key first: the cause a user can act on.)
        if why := exclusion(provider, routing_request(settings), config):
            said = f"provider {provider} cannot be used: {why}"
            raise invalid("settings.provider", said, why, "provider_unavailable")
    if provider not in ("auto", "local") and refine_wanted(settings):
        if not config.replicate_api_token:  # refines of a provider's images run on Replicate
            why = "REPLICATE_API_TOKEN not configured (upscale and removeBackground need it)"
            raise invalid("settings.provider", why, why, "provider_unavailable")
    if body.webhookUrl is not None and (why := url_problem(body.webhookUrl)):
        raise invalid("webhookUrl", f"webhookUrl {why}", why)


def check_persona(session: Session, persona_id: str | None, field: str = "personaId") -> None:
    """``field``: where the request named it (a batch's item or matrix entry)."""
    if persona_id and not session.scalar(
        select(Persona.id).where(Persona.id == persona_id, Persona.user_id == g.user_id)
    ):
        raise invalid(field, f"{field} does not name one of your personas", "unknown persona")


def _store_upload(s: Services, gen_id: str, upload: Upload) -> str:
    """The photo, under a name nobody can guess: the bucket (or ``/cdn/``)
    serves every key to anyone, and an image's shared URL names its folder.
    The photo is the designer's own, as sent (an unreleased design, its EXIF
    with the place it was taken), and no answer shows it."""
    data, content_type, ext = upload
    key = f"{generation_prefix(g.user_id, gen_id)}input-{secrets.token_hex(16)}.{ext}"
    try:
        s.storage.put(key, data, content_type)
    except StorageError:
        raise service_unavailable("storage is unavailable") from None
    return key


def _submit(
    body: Body,
    mode: str,
    payload: dict[str, Any],
    upload: Upload | None = None,
) -> Response:
    s = services()
    key = idempotency_key()
    req_hash = request_hash(payload, upload) if key is not None else None
    settings = body.settings.model_dump()
    check_request(body, settings)
    gen_id, input_key = new_id("gen"), None
    try:
        with s.db.session() as session:
            if (prior := replay(session, Generation, key, req_hash)) is not None:
                return _accepted(prior.id)
            check_persona(session, body.personaId)
            quota = partial(check_submission, session, s.settings, g.user_id)
            cost = estimate(settings, s.settings)[0]
            if upload is not None:
                quota(cost, lock=False)  # most refusals before the upload, not after it
                input_key = _store_upload(s, gen_id, upload)
            quota(cost)  # under the user's lock (not held through the upload) to the commit
            svc.create(
                session,
                generation_id=gen_id,
                user_id=g.user_id,
                mode=mode,
                settings=settings,
                prompt=body.prompt,
                negative_prompt=body.negativePrompt,
                persona_id=body.personaId,
                vlt_spec=_spec(body),
                webhook_url=body.webhookUrl,
                idempotency_key=key,
                request_hash=req_hash,
                input_key=input_key,
                dispatched_at=utcnow(),
                deadline_at=utcnow() + timedelta(seconds=s.settings.generation_timeout),
            )
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key committed first.
        if input_key:
            s.storage.delete_prefix(generation_prefix(g.user_id, gen_id))
        with s.db.session() as session:
            if (prior := replay(session, Generation, key, req_hash)) is not None:
                return _accepted(prior.id)
        raise
    except BaseException:
        if input_key:  # nothing was stored for this request: neither is its upload
            s.storage.delete_prefix(generation_prefix(g.user_id, gen_id))
        raise
    if not dispatch(s.celery, gen_id, stages=stages_for(settings)):
        _leave_to_dispatcher(s, gen_id)
    return _accepted(gen_id)


def _leave_to_dispatcher(s: Services, gen_id: str) -> None:
    """The broker refused the chain: the maintenance dispatcher sends a
    generation without ``dispatched_at`` within seconds."""
    try:
        with s.db.session() as session:
            svc.clear_dispatched(session, gen_id)
    except SQLAlchemyError as exc:
        # Still found: the dispatcher re-sends what no worker picked up
        # within the first stage's stall timeout (app.pipeline.maintenance).
        log.warning("could not mark %s undispatched: %s", gen_id, type(exc).__name__)


@bp.post("/from-prompt")
def from_prompt():
    payload = json_body()
    return _submit(parse_or_hint(PromptSubmit, payload), "prompt", payload)


@bp.post("/from-image")
def from_image():
    if request.is_json:
        payload = json_body()
        return _submit(parse(SpecSubmit, payload), "image", payload)
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with an 'image' file, or JSON with a vltSpec",
        )
    if not request.mimetype_params.get("boundary"):  # werkzeug then reads no part at all
        raise ApiError(400, "bad_request", "the multipart Content-Type names no boundary")
    limits = services().settings
    # Room for the image (every other body has MAX_JSON_BYTES): set before the form is read.
    request.max_content_length = upload_limit(limits.max_upload_bytes)
    extra = set(request.form) - {*FORM_FIELDS, "image"} | set(request.files) - {"image"}
    unknown = sorted(name or "(a part without a name)" for name in extra)
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"unknown form fields: {', '.join(unknown)}",
            [{"field": name, "message": "unknown field"} for name in unknown],
        )
    file = request.files.get("image")
    if file is None:
        raise invalid("image", "the 'image' file field is required", "required")
    fields: dict[str, Any] = {k: v for k, v in request.form.items() if k != "settings"}
    if "settings" in request.form:
        fields["settings"] = parse_json(request.form["settings"], "the settings field")
    body = parse(ImageSubmit, fields)
    upload = read_image(file, limits.max_upload_bytes, limits.max_image_pixels)
    return _submit(body, "image", fields, upload)
