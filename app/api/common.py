"""Helpers every blueprint uses: the app's services, JSON bodies, ownership,
``Idempotency-Key`` replays."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery
from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge

from app.api.errors import ApiError, invalid, service_unavailable
from app.domain.states import REQUEST_SLOTS
from app.pipeline import stops
from app.platform.config import Settings
from app.platform.db import Database
from app.platform.storage import Storage, StorageError

log = logging.getLogger(__name__)
Upload = tuple[bytes, str, str]  # bytes, content type, extension
Row = TypeVar("Row")


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    storage: Storage
    celery: Celery


def services() -> Services:
    return current_app.extensions["bff"]


MAX_JSON_DEPTH = 32  # our deepest document (a vltSpec) is 4 levels deep
# Entries of one array or object: ours hold 100 at most (a batch's items). A
# body of 10 MB can hold millions, each one more error pydantic makes and
# the 422 lists (a 94 MB answer to a settings object of a million keys).
MAX_JSON_ENTRIES = 1000
# Every request body but an image upload's form (``submit.from_image`` lets
# that one be larger): JSON is read whole before MAX_JSON_ENTRIES can refuse
# it, and 10 MB of "[]," held 270 MB and 2.3 s of CPU. Our largest: a batch
# of 100 items, each prompt and negative prompt at 5,000 characters, is
# 1.2 MB in ASCII and 3.1 MB as CJK in UTF-8 (as the ``bff`` client sends
# it); \u-escaped (Python's ``json`` default) it is 6 MB, over the limit.
MAX_JSON_BYTES = 4 * 2**20


def parse_json(raw: str | bytes, what: str = "the request body") -> Any:
    """Every JSON a request carries is read here: nesting and the size of
    each array and object are bounded, so a document nested thousands deep
    is a 400, not a RecursionError (a 500) here or in whatever walks it next
    (validation, hashing, the database);
    and every string must be text UTF-8 can hold: a lone surrogate
    (``"\\ud800"``) would be stored, then fail every answer that shows it."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON") from None
    except ValueError:  # valid JSON, but an integer Python will not read (> 4,300 digits)
        raise ApiError(400, "malformed_json", f"{what} has a number too long to read") from None
    level, depth = [data], 0
    while level:  # level by level, no recursion
        if any(isinstance(x, str) and not _is_text(x) for x in level):
            raise ApiError(400, "malformed_json", f"{what} has a string with a lone surrogate")
        containers = [x for x in level if isinstance(x, (dict, list))]
        if any(len(c) > MAX_JSON_ENTRIES for c in containers):
            why = f"{what} has an array or object of more than {MAX_JSON_ENTRIES} entries"
            raise ApiError(400, "malformed_json", why)
        depth += bool(containers)
        if depth > MAX_JSON_DEPTH:
            raise ApiError(
                400, "malformed_json", f"{what} is nested deeper than {MAX_JSON_DEPTH} levels"
            )
        level = [
            child for c in containers for child in ((*c, *c.values()) if isinstance(c, dict) else c)
        ]
    return data


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "send a JSON body (Content-Type: application/json)"
        )
    raw = request.get_data()
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # Chunked: Werkzeug stops reading at the limit, so what we read is a
        # body cut short (a 400, or worse, a valid prefix); it was too large.
        raise RequestEntityTooLarge()
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    return data


def receive_body() -> None:
    """Read the request's body now, for ``json_body`` to parse later: a route
    that answers 404 before 400 locks the generation first, and a client
    sending its body slowly must not hold that lock (on SQLite, the whole
    database's write lock) while it does."""
    request.get_data()


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() also reads "٣", "1_0" and " 5 ".
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise invalid(name, f"{name} must be an integer", "not an integer")
    value = int(raw)  # (a URL of 4 KB at most: never the 4,300 digits int() refuses)
    if not low <= value <= high:
        raise invalid(name, f"{name} must be between {low} and {high}", f"must be {low}-{high}")
    return value


def delete_with_objects(
    storage: Storage, prefixes: list[str], delete_rows: Callable[[], None], what: str
) -> None:
    """Delete the stored objects under ``prefixes``, then the rows, then the
    objects again: a stage may store something between the first pass and
    the rows' delete (one storing after its row is gone cleans up itself).
    The first pass failing is a 503 with the rows kept, so the client can
    try again; the second failing is left to the storage sweep."""
    try:
        for prefix in prefixes:
            storage.delete_prefix(prefix)
    except StorageError:
        raise service_unavailable("storage is unavailable; try again") from None
    delete_rows()
    try:
        for prefix in prefixes:
            storage.delete_prefix(prefix)
    except StorageError as exc:  # the storage sweep removes what is left
        log.warning("delete of %s: second pass failed: %s", what, exc)


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ApiError(400, "bad_request", "Idempotency-Key must be 1-255 characters")
    return key


def request_hash(payload: dict[str, Any], upload: Upload | None = None) -> str:
    """What a key's request was: the path (so a key is for one resource), the
    body (key order aside) and the uploaded image."""
    image = hashlib.sha256(upload[0]).hexdigest() if upload else None
    canon = json.dumps({"path": request.path, "body": payload, "image": image}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def replay(
    session: Session,
    model: type[Row],
    key: str | None,
    req_hash: str | None,
    key_column: str = "idempotency_key",
    hash_column: str = "request_hash",
) -> Row | None:
    """The caller's ``model`` row whose ``key_column`` holds ``key`` (the
    first answer was about it), or None; 409 if the key came with another
    request. The columns hold a unique (user_id, key) constraint, so a
    concurrent duplicate's insert fails: look again then."""
    if key is None:
        return None
    prior = session.scalars(
        select(model).where(
            model.user_id == g.user_id,
            getattr(model, key_column) == key,
        )
    ).one_or_none()
    if prior is not None and getattr(prior, hash_column) != req_hash:
        raise key_reused()
    return prior


def request_key(payload: dict[str, Any]) -> dict[str, str]:
    """This request's Idempotency-Key and hash, as a generation keeps them
    with its latest request of a kind (``asked_before``); {} without a key."""
    key = idempotency_key()
    return {"idempotencyKey": key, "requestHash": request_hash(payload)} if key else {}


def asked_before(kept: dict[str, Any] | None, slot: str, key: dict[str, str]) -> bool:
    """Whether the generation's latest request of kind ``slot`` (``kept``:
    its pipeline_data, which holds its latest refine, cancel and retry) came
    with this request's key: this is its retry, to be answered again and not
    acted on. 409 if the key came with another request of any of them."""
    for name in REQUEST_SLOTS if key else ():
        asked = (kept or {}).get(name) or {}
        if asked.get("idempotencyKey") == key["idempotencyKey"]:
            if name != slot or asked.get("requestHash") != key["requestHash"]:
                raise key_reused()
            return True
    return False


def key_reused() -> ApiError:
    """The 409 for an Idempotency-Key that came with another request first."""
    message = "this Idempotency-Key was already used with a different request"
    return ApiError(409, "idempotency_conflict", message)


def refuse_while_stopping(session: Session, generation_id: str, what: str) -> None:
    """409 (``Retry-After``) while the generation's last run is owed a stop
    (``stops.owed``): ``what`` again in a moment."""
    if stops.owed(session, generation_id):
        why = f"its last run's predictions are being stopped; {what} again in a few seconds"
        raise ApiError(409, "conflict", why, headers={"Retry-After": "5"})
