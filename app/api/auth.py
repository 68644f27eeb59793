"""API keys: random, high entropy, stored as SHA-256 hashes, compared in
constant time. A key looks like ``bff_<8-char prefix>_<secret>``; the prefix
is shown to operators (``bff users revoke PREFIX``) and never the secret.

Each process remembers a key it has verified for ``KEY_CACHE_TTL`` seconds
(keyed by the key's SHA-256, never the key itself), so a request does not
spend a transaction on authentication. When the entry expires, the first
request to find it so verifies the key again; the process's other requests
with that key are answered from the entry meanwhile, instead of all asking
the database at once (under load, every thread did, every 5 s: the GET
benchmark's p99). The cost: a key revoked by another process (``bff users
revoke`` run elsewhere, or another API process) keeps working in this one for
at most ``KEY_CACHE_TTL`` seconds plus that one lookup, and never more than
twice ``KEY_CACHE_TTL``. ``revoke()`` forgets the key in its own process at
once. Failed lookups are not cached, and forget the entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable

from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.domain.models import ApiKey, User, utcnow
from app.webhooks import generate_secret

# Seconds a verified key is trusted without asking the database (keep <= 10).
KEY_CACHE_TTL = 5.0
KEY_CACHE_MAX = 10_000
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,19}")  # "Token", "Basic": never a key


class KeyCache:
    """SHA-256 of a key -> (user id, prefix, expiry); shared by a process's threads."""

    def __init__(
        self,
        ttl: float = KEY_CACHE_TTL,
        max_entries: int = KEY_CACHE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._entries: dict[tuple[str, str], tuple[int, str, float]] = {}
        # Expired entries a request is verifying again. One whose request
        # failed stays here, harmless: the entry ages out of use (see get).
        self._verifying: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def get(self, scope: str, digest: str) -> int | None:
        """The user id of a key verified lately, or None: the caller looks
        the key up and calls ``put`` (or ``forget`` if it failed). Of an
        expired entry, the first caller gets None; the others get the entry
        while that lookup runs, for at most one more TTL."""
        k = (scope, digest)
        hit = self._entries.get(k)
        if hit is None:
            return None
        now = self.clock()
        expires = hit[2]
        if now < expires:
            return hit[0]
        if now >= expires + self.ttl:
            return None  # too old to answer anyone with
        with self._lock:
            if k in self._verifying:
                return hit[0]
            self._verifying.add(k)
        return None

    def put(self, scope: str, digest: str, user_id: int, prefix: str) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # rare, and only costs a lookup per key
                self._verifying.clear()
            self._entries[(scope, digest)] = (user_id, prefix, self.clock() + self.ttl)
            self._verifying.discard((scope, digest))

    def forget(self, scope: str, digest: str) -> None:
        """The key failed its lookup: nobody is answered from its entry."""
        with self._lock:
            self._entries.pop((scope, digest), None)
            self._verifying.discard((scope, digest))

    def forget_prefix(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k, v in self._entries.items() if v[1] == prefix]:
                del self._entries[k]
                self._verifying.discard(k)


key_cache = KeyCache()  # module global, looked up at call time (tests swap it)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    parts = key.split("_")
    return "_".join(parts[:2]) if len(parts) >= 3 else key[:12]


def issue_key(session: Session, user: User) -> str:
    key = f"bff_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(user_id=user.id, prefix=key_prefix(key), key_hash=hash_key(key)))
    return key


def create_user(session: Session, name: str) -> tuple[User, str]:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, webhook_secret=generate_secret())
        session.add(user)
        session.flush()
    return user, issue_key(session, user)


def revoke(session: Session, prefix: str) -> int:
    keys = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).all()
    for k in keys:
        k.revoked_at = utcnow()
    key_cache.forget_prefix(prefix)  # this process at once; others within KEY_CACHE_TTL
    return len(keys)


def authenticate_id(session: Session, key: str) -> int | None:
    """The id of the user an active key belongs to, in one query (no cache)."""
    if "\x00" in key:  # never a key of ours, and PostgreSQL refuses NUL in text
        return None
    candidates = session.execute(
        select(ApiKey.user_id, ApiKey.key_hash).where(
            ApiKey.prefix == key_prefix(key), ApiKey.revoked_at.is_(None)
        )
    ).all()
    digest = hash_key(key)
    for user_id, key_hash in candidates:
        if hmac.compare_digest(key_hash, digest):
            return user_id
    return None


def load_user() -> None:
    """``before_request`` of every protected blueprint: resolve
    ``Authorization: Bearer <key>`` to ``g.user_id`` or answer 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        # Named only if it is a scheme's name: a key sent bare, or after
        # "Bearer:", would have its first characters echoed in the answer.
        said = (
            f" (not '{scheme}')" if SCHEME.fullmatch(scheme) and scheme.lower() != "bearer" else ""
        )
        raise _unauthorized(f"missing API key: send 'Authorization: Bearer <key>'{said}")
    key = key.strip()
    db = current_app.extensions["bff"].db
    digest = hash_key(key)
    user_id = key_cache.get(db.url, digest)
    if user_id is None:
        with db.session() as session:
            user_id = authenticate_id(session, key)
        if user_id is None:
            key_cache.forget(db.url, digest)  # revoked since it was verified
            raise _unauthorized("invalid or revoked API key")
        key_cache.put(db.url, digest, user_id, key_prefix(key))
    g.user_id = user_id


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
