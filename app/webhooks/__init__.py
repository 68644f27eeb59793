"""Webhooks: the final generation POSTed to the job's ``webhookUrl``, signed per
the Standard Webhooks spec (standardwebhooks.com).

- Secret: ``whsec_`` + standard base64 of 32 random bytes; the HMAC key is the
  base64-decoded part.
- Headers: ``webhook-id`` (the delivery id, the same on every retry so the
  receiver can de-duplicate), ``webhook-timestamp`` (unix seconds of this
  attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>``.
- Body: the final generation JSON, exactly as ``GET /api/generate/<id>`` shows
  it (the contract: "the final generation is POSTed there"); its ``status``
  names the event, also recorded as ``generation.<status>`` in the delivery row.
- Delivery: one ``webhook_deliveries`` row per message; non-2xx or a network
  error is retried with exponential backoff until a day has passed.
- SSRF: the host is resolved at delivery time and *every* address checked;
  private, link-local, reserved, multicast and (outside development) loopback
  targets are refused. The request is then sent to the checked address itself
  (TLS still verifies the host name), so DNS cannot be re-pointed in between.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.domain.models import Base, Generation, User, new_id, utcnow
from app.platform.config import Settings
from app.platform.db import Database

SECRET_PREFIX = "whsec_"
CLAIM = timedelta(seconds=120)  # an attempt in flight; after this the sweep may take over
MAX_DELAY = 4 * 3600.0
PENDING, DELIVERED, FAILED, REFUSED = "pending", "delivered", "failed", "refused"
LOOPBACK_NAMES = ("localhost", "localhost.")


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    # As migration 0003 made them: a generation's deliveries; the sweep's due ones.
    __table_args__ = (
        Index("ix_webhook_deliveries_generation", "generation_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    generation_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Refused(Exception):
    """The target is not an address we are willing to call."""


# ------------------------------------------------------------------ signing


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after ``whsec_``. Raises ValueError."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("not a whsec_ secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("secret is not standard base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("secret must decode to 24-64 bytes")
    return key


def ensure_secret(user: User) -> str:
    """The user's secret, replacing one minted before secrets followed the spec."""
    try:
        secret_key(user.webhook_secret or "")
    except ValueError:
        user.webhook_secret = generate_secret()
    return user.webhook_secret


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


# ------------------------------------------------------------------ targets


def _is_loopback_host(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def submit_url_problem(url: str, settings: Settings) -> str | None:
    """Why ``url`` cannot be a webhookUrl, checked at submit (None if fine)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if not parts.hostname or parts.scheme not in ("https", "http"):
        return "must be an https:// URL"
    if parts.scheme == "http" and not (
        settings.webhooks_allow_loopback and _is_loopback_host(parts.hostname)
    ):
        return "must be https (plain http only to localhost in development)"
    return None


def _refusal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: Settings) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return None if settings.webhooks_allow_loopback else "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or not addr.is_global:
        return "not a public address"
    return None


def resolve_target(url: str, settings: Settings) -> str:
    """Resolve the host now and check every address; return the one to connect to."""
    problem = submit_url_problem(url, settings)
    if problem:
        raise Refused(problem)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Refused(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    addrs = sorted({info[4][0].split("%")[0] for info in infos})
    for raw in addrs:
        why = _refusal(ipaddress.ip_address(raw), settings)
        if why:
            raise Refused(f"{parts.hostname} resolves to {raw}, {why}")
    return addrs[0]


def post(url: str, ip: str, headers: dict[str, str], body: bytes, timeout: float = 10) -> int:
    """POST to the already-checked ``ip``; no redirects followed."""
    import urllib3

    parts = urlsplit(url)
    host = parts.hostname
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    kw: dict[str, Any] = {"server_hostname": host, "assert_hostname": host} if https else {}
    pool_cls = urllib3.HTTPSConnectionPool if https else urllib3.HTTPConnectionPool
    with pool_cls(ip, port, timeout=urllib3.Timeout(connect=5, read=timeout), **kw) as pool:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        resp = pool.urlopen(
            "POST",
            path,
            body=body,
            headers={**headers, "Host": parts.netloc.rsplit("@", 1)[-1]},
            redirect=False,
            retries=False,
        )
        return resp.status


# ------------------------------------------------------------------ delivery


def record_final(session: Session, gen: Generation) -> str | None:
    """Record the final-state message for ``gen`` in the caller's transaction,
    so the transition and its webhook commit together (or not at all).
    Returns the delivery id to send after the commit (None: no webhook)."""
    from app.api.responses import generation_json

    if not gen.webhook_url:
        return None
    session.flush()
    session.expire(gen, ["stages", "assets"])  # the payload shows what was just written
    user = session.get(User, gen.user_id)
    ensure_secret(user)
    delivery = WebhookDelivery(
        id=new_id("msg"),
        user_id=gen.user_id,
        generation_id=gen.id,
        event_type=f"generation.{gen.status}",
        url=gen.webhook_url,
        payload=json.dumps(generation_json(gen), separators=(",", ":")),
        status=PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(delivery)
    return delivery.id


def queue_final(services: Any, generation_id: str) -> str | None:
    """Record and send the final-state message in a transaction of its own
    (for callers that have already committed the transition)."""
    with services.db.session() as session:
        gen = session.get(Generation, generation_id)
        delivery_id = record_final(session, gen) if gen is not None else None
    if delivery_id:
        send(services.celery, delivery_id, 1)
    return delivery_id


def send(celery_app: Any, delivery_id: str, attempt_no: int, countdown: float = 0) -> None:
    try:
        celery_app.send_task(
            "webhooks.deliver", args=(delivery_id, attempt_no), countdown=countdown or None
        )
    except Exception:  # broker down: the sweep (beat) sends it when it is due
        pass


def backoff(attempts: int, base: float) -> float:
    return min(MAX_DELAY, base * 2 ** (attempts - 1)) * random.uniform(0.9, 1.1)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=utcnow().tzinfo)


def attempt(
    db: Database, settings: Settings, delivery_id: str, attempt_no: int
) -> tuple[int, float] | None:
    """Make attempt ``attempt_no`` of a delivery if it is due. Returns the
    attempt to schedule next and in how many seconds: the same one when it is
    not due yet, the following one when this one failed; None when there is
    nothing more to do. A message for an attempt already made (a duplicate, a
    redelivery) is dropped."""
    now = utcnow()
    with db.session() as session:
        d = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if d is None or d.status != PENDING or d.attempts != attempt_no - 1:
            return None
        due = _aware(d.next_attempt_at or now)
        if due > now + timedelta(seconds=1):
            return attempt_no, (due - now).total_seconds()
        d.attempts, d.next_attempt_at = attempt_no, now + CLAIM  # claimed
        secret = ensure_secret(session.get(User, d.user_id))
        url, payload, created = d.url, d.payload, _aware(d.created_at)
    code, error = None, None
    try:
        ip = resolve_target(url, settings)
        ts = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "designer-bff-webhooks/1",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, delivery_id, ts, payload),
        }
        code = post(url, ip, headers, payload.encode())
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except Refused as exc:
        return _record(db, delivery_id, REFUSED, None, f"refused: {exc}")
    except Exception as exc:  # network errors are the receiver's outage: retry
        error = f"{type(exc).__name__}: {exc}"[:500]
    if error is None:
        return _record(db, delivery_id, DELIVERED, code, None)
    delay = backoff(attempt_no, settings.webhook_retry_base)
    if (now - created).total_seconds() + delay > settings.webhook_max_age:
        return _record(db, delivery_id, FAILED, code, f"gave up: {error}")
    _record(db, delivery_id, PENDING, code, error, now + timedelta(seconds=delay))
    return attempt_no + 1, delay


def _record(
    db: Database,
    delivery_id: str,
    status: str,
    code: int | None,
    error: str | None,
    next_at: datetime | None = None,
) -> None:
    with db.session() as session:
        d = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        d.status, d.last_status_code, d.last_error = status, code, error
        d.next_attempt_at = next_at
        if status == DELIVERED:
            d.delivered_at = utcnow()


def due_deliveries(db: Database, limit: int = 200) -> list[tuple[str, int]]:
    """Pending deliveries whose attempt is overdue (a lost message, a dead
    worker's claim): ``(id, next attempt number)`` for the sweep to send."""
    cutoff = utcnow() - timedelta(seconds=60)
    with db.session() as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at < cutoff)
            .limit(limit)
        ).all()
    return [(rid, attempts + 1) for rid, attempts in rows]
