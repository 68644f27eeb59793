"""Keyset paging, newest first, for any table with ``created_at`` and a
prefixed id (generations, batches).

A page's position (the cursor) is the microseconds since the epoch of the
last item's ``created_at`` and its id. Every string of the pattern's shape is
a position, so any cursor the API's document allows is one the API answers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def cursor_pattern(id_prefix: str) -> str:
    """The cursor's regular expression for ids like ``gen_<24 hex>``."""
    return f"^[0-9]{{1,17}}\\.{id_prefix}_[0-9a-f]{{24}}$"


def encode_cursor(row: Any) -> str:
    return f"{(row.created_at - _EPOCH) // _MICROSECOND}.{row.id}"


def decode_cursor(cursor: str, pattern: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not one of our cursors."""
    if not re.fullmatch(pattern, cursor):
        raise ValueError("invalid cursor")
    micros, row_id = cursor.split(".")
    return _EPOCH + int(micros) * _MICROSECOND, row_id


def page(
    session: Session, q: Select, model: Any, limit: int, cursor: str | None, pattern: str
) -> tuple[list[Any], str | None]:
    """One page of ``q`` (rows of ``model``) newest first (the index on
    ``created_at, id`` serves it), and the cursor of the next page or None.
    Raises ValueError on a cursor that is not one of ours."""
    q = q.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if cursor is not None:
        created, row_id = decode_cursor(cursor, pattern)
        if session.get_bind().dialect.name == "sqlite":
            created = created.replace(tzinfo=None)  # compare like with like
        q = q.where(tuple_(model.created_at, model.id) < (created, row_id))
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None
