"""/health (real checks of database, broker, storage and a separate Redis) and
/cdn/ (local storage).

The route needs no key, so a failing check answers with its exception's
class only (and a schema behind the code with the two revisions and the
fix); the operator gets the whole reason in the log (``FailureLog``: not a
line per poll of a load balancer)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Blueprint, abort, current_app, send_from_directory
from redis.connection import parse_url

from app.api.common import services
from app.api.ops_responses import HealthOut
from app.api.responses import respond
from app.platform.config import Settings
from app.platform.derived import hide_passwords
from app.platform.redis import client
from app.platform.schema import SchemaOutOfDate, check_schema
from app.platform.storage import LocalStorage
from app.providers import PROVIDERS, verify

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


def reason(exc: BaseException) -> str:
    """What went wrong, on one line, for the log: no password of a URL in it."""
    said = hide_passwords(" ".join(str(exc).split()))[:1000]  # masked, then cut
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


class FailureLog:
    """One log line per check when its state (ok, or the reason it fails)
    changes, and a reminder per ``every`` seconds while it keeps failing. A
    check that flaps (a load balancer polls every second) writes at most one
    line per ``gap`` seconds; the state it settles in is written after.
    One per app and ``what`` (health, metrics): its threads share it."""

    def __init__(
        self,
        every: float = 60.0,
        gap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        what: str = "health",
    ) -> None:
        self.every, self.gap, self.clock, self.what = every, gap, clock, what
        self._said: dict[str, tuple[str | None, float]] = {}  # check -> (last logged, when)
        self._lock = threading.Lock()

    def note(self, check: str, why: str | None) -> None:
        """``why`` the check failed, or None: it passed."""
        now = self.clock()
        with self._lock:
            said, at = self._said.get(check, (None, float("-inf")))
            changed = why != said
            if (why is None and not changed) or now - at < (self.gap if changed else self.every):
                return
            self._said[check] = (why, now)
        if why is None:
            log.info("%s: %s ok again", self.what, check)
        else:
            log.warning("%s: %s failing: %s", self.what, check, why)


def failures(what: str = "health") -> FailureLog:
    """The app's log of ``what``'s failing checks (/health's, /metrics')."""
    return current_app.extensions.setdefault(f"bff.{what}_failures", FailureLog(what=what))


def _check(name: str, fn: Callable[[], None]) -> str:
    try:
        fn()
    except Exception as exc:
        failures().note(name, reason(exc))
        if isinstance(exc, SchemaOutOfDate):  # its message is the fix, and holds no secret
            return f"error: {exc}"
        return f"error: {type(exc).__name__}"
    failures().note(name, None)
    return "ok"


def _database() -> None:
    """Reachable and migrated to the code's head: one connection, one SELECT."""
    with services().db.engine.connect() as conn:
        check_schema(conn)


def _broker() -> None:
    with services().celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _separate_redis(settings: Settings) -> str | None:
    """REDIS_URL when it is not the broker too (CELERY_BROKER_URL names
    another): the broker's check does not reach it, and without it the shared
    rate limits fail closed (rate-limited stages retry, then fail) and live
    events fall back to polling."""
    url = settings.redis_url
    return url if url and _server(url) != _server(settings.broker_url) else None


def _server(url: str) -> tuple[object, ...] | str:
    """Which Redis, as whom, ``url`` names: ``redis://host:6379`` and
    ``redis://host:6379/0/`` are one broker and REDIS_URL (db 0 implicit).
    A URL that is no Redis's (``amqp://``) is itself."""
    try:
        k = parse_url(url)
    except ValueError:
        return url
    where = (k.get("host"), k.get("port", 6379), k.get("path"), k.get("db", 0))
    return (*where, k.get("username"), k.get("password"), k.get("connection_class"))


@bp.get("/health")
def health():
    s = services()
    checks = {
        "database": _check("database", _database),
        "broker": _check("broker", _broker),
        "storage": _check("storage", s.storage.check),
    }
    if redis_url := _separate_redis(s.settings):
        checks["redis"] = _check("redis", lambda: client(redis_url).ping())
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
