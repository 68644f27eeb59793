"""POST /api/generate/from-prompt and /from-image: validate, authorise,
store the row (and the upload) durably, then enqueue; answer 202 at once.
An ``Idempotency-Key`` replays the first answer; the same key with another
body is 409."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.datastructures import Headers

from .. import generations as svc
from ..auth import load_user
from ..config import PROVIDER_KEY_VARS
from ..errors import ApiError
from ..models import Generation, Persona, new_id, utcnow
from ..pipeline.route import exclusion, routing_request
from ..queue import dispatch
from ..quotas import check_submission
from ..schemas import ImageSubmit, PromptSubmit
from ..storage import StorageError, generation_prefix
from ..submissions import SubmitRow
from ..webhooks import submit_url_problem
from .common import Services, check_user_id, json_body, services
from .uploads import read_image

log = logging.getLogger(__name__)
bp = Blueprint("submit", __name__, url_prefix="/api/generate")
bp.before_request(load_user)


class _Accepted(Response):
    """A submit's 202 as ``_accepted`` makes it: its headers are final when
    made (an ASCII relative ``Location``, ``Content-Length`` set with the
    body), so Werkzeug's last pass over them (``get_wsgi_headers``: a copy,
    IRI conversion, the length) would change nothing; skipped, it halves the
    response's cost (26 against 13 us)."""

    def get_wsgi_headers(self, environ: dict[str, Any]) -> Headers:
        return self.headers


def _accepted(gen_id: str) -> Response | tuple[dict[str, Any], int, dict[str, str]]:
    link = f"/api/generate/{gen_id}"
    provider = current_app.json
    if provider.compact is False or (provider.compact is None and current_app.debug):
        # Pretty-printed (debug): as jsonify makes it.
        return {"id": gen_id, "status": "pending", "links": {"self": link}}, 202, {"Location": link}
    # The bytes jsonify makes of that dict (compact, keys in this order, then a
    # newline), written directly: it is the answer to every submit, and ids
    # are ours (letters, digits, "_"), so nothing needs escaping.
    resp = _Accepted(
        f'{{"id":"{gen_id}","status":"pending","links":{{"self":"{link}"}}}}\n',
        202,
        mimetype=provider.mimetype,
    )
    resp.headers["Location"] = link
    return resp


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


def _replay(session, key: str | None, req_hash: str | None):
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


def _check_provider(body: PromptSubmit | ImageSubmit, settings: dict[str, Any]) -> None:
    """``settings``: ``body.settings`` dumped (once per request, by the caller)."""
    provider = body.settings.provider
    if provider != "auto":
        config = services().settings
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


def _check_persona(session, body: PromptSubmit | ImageSubmit) -> None:
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


def _check_webhook(body: PromptSubmit | ImageSubmit) -> None:
    if body.webhookUrl and (why := submit_url_problem(body.webhookUrl, services().settings)):
        raise ApiError(
            422,
            "validation_error",
            f"webhookUrl {why}",
            [{"field": "webhookUrl", "message": why}],
        )


def _check_submit(session, body: PromptSubmit | ImageSubmit, settings: dict[str, Any]) -> None:
    check_user_id(body.userId)
    check_submission(session, services().settings, g.user_id)
    _check_provider(body, settings)
    _check_persona(session, body)
    _check_webhook(body)


def _passes_checks_without_db(body: PromptSubmit | ImageSubmit, settings: dict[str, Any]) -> bool:
    try:
        check_user_id(body.userId)
        _check_provider(body, settings)
        _check_webhook(body)
    except ApiError:
        return False  # the ordinary path answers, in its own order of checks
    return True


def _send(s: Services, gen_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Send the chain of a committed generation (its ``dispatched_at`` is set)
    and answer 202; the generation is durable whatever the broker does."""
    if not dispatch(s.celery, gen_id):
        try:
            with s.db.session() as session:
                svc.clear_dispatched(session, gen_id)  # the dispatcher sends it in seconds
        except SQLAlchemyError as exc:
            # Still found: the dispatcher re-sends what no worker picked up
            # within the first stage's stall timeout (app.maintenance).
            log.warning("could not mark %s undispatched: %s", gen_id, type(exc).__name__)
    return _accepted(gen_id)


def _submit(
    body: PromptSubmit | ImageSubmit,
    mode: str,
    fingerprint: Callable[[], str],
    upload: tuple[bytes, str, str] | None = None,
):
    """``fingerprint``: the request's hash, stored to tell a replay (same
    Idempotency-Key, same request) from a conflict; computed only when the
    request has a key, since nothing else reads it."""
    s = services()
    key = _idempotency_key()
    req_hash = fingerprint() if key is not None else None
    gen_id = new_id("gen")
    # The generation as the request describes it, for either insert below.
    fields: dict[str, Any] = {
        "generation_id": gen_id,
        "user_id": g.user_id,
        "mode": mode,
        "settings": body.settings.model_dump(),
        "prompt": body.prompt,
        "negative_prompt": body.negativePrompt,
        "persona_id": body.personaId,
        "vlt_spec": body.vltSpec if isinstance(body, ImageSubmit) else None,
        "webhook_url": body.webhookUrl,
        "idempotency_key": key,
        "request_hash": req_hash,
    }
    settings = fields["settings"]
    if upload is None and s.db.is_postgres and _passes_checks_without_db(body, settings):
        # With the submits that arrive meanwhile (app.submit_batch): one
        # statement runs the checks the database answers and inserts the
        # generations and their stage rows, committed durably once; one
        # round trip sends their chains.
        if s.submits.accept(SubmitRow(**fields, now=utcnow())):
            return _accepted(gen_id)
        # A check failed, the key was used before, or the statement failed:
        # the path below says which (or answers 503).
    input_key = None
    # One pooled connection (one checkout and its check) for the insert and,
    # should a concurrent request with the same key win, the replay.
    with s.db.connection() as conn:
        try:
            with s.db.session(conn=conn) as session:
                if (replay := _replay(session, key, req_hash)) is not None:
                    return replay
                _check_submit(session, body, settings)
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
                svc.create(session, **fields, input_key=input_key, dispatched_at=utcnow())
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key committed first.
            if input_key:
                s.storage.delete_prefix(generation_prefix(g.user_id, gen_id))
            with s.db.session(conn=conn) as session:
                if (replay := _replay(session, key, req_hash)) is not None:
                    return replay
            raise
    return _send(s, gen_id)


@bp.post("/from-prompt")
def from_prompt():
    payload = json_body()
    body = PromptSubmit.model_validate(payload)
    return _submit(body, "prompt", lambda: _request_hash(payload))


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
        return _submit(body, "image", lambda: _request_hash(payload))
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
    return _submit(
        body,
        "image",
        lambda: _request_hash(fields, hashlib.sha256(upload[0]).hexdigest()),
        upload,
    )
