"""Standard Webhooks signatures (standardwebhooks.com), made by the
``standardwebhooks`` package. A secret is ``whsec_`` + standard base64 of 32
random bytes; the HMAC key is the decoded part."""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from datetime import datetime

from standardwebhooks import Webhook

from app.domain.models import User

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def follows_spec(secret: str) -> bool:
    """``whsec_`` + strict base64 of 24-64 bytes. Checked here because the
    package pads and decodes leniently, so it would sign with a malformed one."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        return False
    return 24 <= len(key) <= 64


def ensure_secret(user: User) -> str:
    """The user's secret, replacing one minted before secrets followed the spec."""
    if not follows_spec(user.webhook_secret or ""):
        user.webhook_secret = generate_secret()
    return user.webhook_secret


def signed_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` of one attempt."""
    return {
        "webhook-id": msg_id,
        # Whole seconds, rounded as the package rounds the time it signs.
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
    }
