"""API keys: random, high entropy, stored as SHA-256 hashes, compared in
constant time. A key looks like ``bff_<8-char prefix>_<secret>``; the prefix
is shown to operators (``bff users revoke PREFIX``) and never the secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ApiError
from .models import ApiKey, User, utcnow
from .webhooks import generate_secret


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
    return len(keys)


def authenticate(session: Session, key: str) -> User | None:
    if "\x00" in key:  # never a key of ours, and PostgreSQL refuses NUL in text
        return None
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == key_prefix(key), ApiKey.revoked_at.is_(None))
    ).all()
    digest = hash_key(key)
    for k in candidates:
        if hmac.compare_digest(k.key_hash, digest):
            return session.get(User, k.user_id)
    return None


def load_user() -> None:
    """``before_request`` of every protected blueprint: resolve
    ``Authorization: Bearer <key>`` to ``g.user_id`` or answer 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with current_app.extensions["bff"].db.session() as session:
        user = authenticate(session, key.strip())
        if user is None:
            raise ApiError(
                401,
                "unauthorized",
                "invalid or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        g.user_id = user.id
