"""/health (real checks of database, broker and storage) and /cdn/ (local storage)."""

from __future__ import annotations

from flask import Blueprint, abort, send_from_directory

from app.api.common import services
from app.api.ops_responses import HealthOut
from app.api.responses import respond
from app.platform.schema import SchemaOutOfDate, check_schema
from app.platform.storage import LocalStorage
from app.providers import PROVIDERS, verify

bp = Blueprint("health", __name__)


def _check(fn) -> str:
    try:
        fn()
    except SchemaOutOfDate as exc:  # its message is the fix, and holds no secret
        return f"error: {exc}"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _database() -> None:
    """Reachable and migrated to the code's head: one connection, one SELECT."""
    with services().db.engine.connect() as conn:
        check_schema(conn)


def _broker() -> None:
    with services().celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@bp.get("/health")
def health():
    s = services()
    checks = {
        "database": _check(_database),
        "broker": _check(_broker),
        "storage": _check(s.storage.check),
    }
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ok else "degraded",
        "checks": checks,
        "storage_backend": s.settings.storage_backend,
        "providers": {pid: verify.recent(pid, s.settings) for pid in PROVIDERS},
    }
    return respond(HealthOut, body, 200 if ok else 503)


@bp.get("/openapi.json")
def openapi():
    from app.api.openapi import build_spec

    return build_spec()


@bp.get("/cdn/<path:key>")
def cdn(key: str):
    storage = services().storage
    if not isinstance(storage, LocalStorage):
        abort(404)
    return send_from_directory(storage.root, key, max_age=31536000)
