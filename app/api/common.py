"""Helpers every blueprint uses: the app's services, JSON bodies, ownership."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import current_app, g, request

from app.api.errors import ApiError, invalid
from app.platform.config import Settings
from app.platform.db import Database
from app.platform.storage import Storage, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    storage: Storage
    celery: Celery


def services() -> Services:
    return current_app.extensions["bff"]


MAX_JSON_DEPTH = 32  # our deepest document (a vltSpec) is 4 levels deep


def parse_json(raw: str | bytes, what: str = "the request body") -> Any:
    """Every JSON a request carries is read here: nesting is bounded, so a
    document nested thousands deep is a 400, not a RecursionError (a 500)
    here or in whatever walks it next (validation, hashing, the database);
    and every string must be text UTF-8 can hold: a lone surrogate
    (``"\\ud800"``) would be stored, then fail every answer that shows it."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON") from None
    level, depth = [data], 0
    while level:  # level by level, no recursion
        if any(isinstance(x, str) and not _is_text(x) for x in level):
            raise ApiError(400, "malformed_json", f"{what} has a string with a lone surrogate")
        containers = [x for x in level if isinstance(x, (dict, list))]
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
    data = parse_json(request.get_data())
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    return data


def check_user_id(claimed: Any) -> None:
    """The seed's clients send ``userId``: it must be the key's own user."""
    if claimed is not None and str(claimed) != str(g.user_id):
        raise ApiError(403, "forbidden", "userId does not match the API key's user")


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"{name} must be an integer", "not an integer") from None
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
        raise ApiError(
            503,
            "service_unavailable",
            "storage is unavailable; try again",
            headers={"Retry-After": "5"},
        ) from None
    delete_rows()
    try:
        for prefix in prefixes:
            storage.delete_prefix(prefix)
    except StorageError as exc:  # the storage sweep removes what is left
        log.warning("delete of %s: second pass failed: %s", what, exc)
