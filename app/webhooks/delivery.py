"""Delivery: one ``webhook_deliveries`` row per message, recorded with the
transition it reports; sent at least once (the same ``webhook-id`` on every
retry, so the receiver can de-duplicate); non-2xx or a network error retried
with exponential backoff until a day has passed; a refused target recorded as
``refused`` and never called; one not yet delivered when a newer message
about the same generation (or batch) is recorded, ``superseded``."""

from __future__ import annotations

import json
import random
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from app.domain.models import Batch, Generation, User, new_id, utcnow
from app.platform.config import Settings
from app.platform.db import Database
from app.platform.storage import public_base
from app.webhooks.guard import Refused, Unresolved, post, resolve_target
from app.webhooks.model import (
    DELIVERED,
    FAILED,
    PENDING,
    REFUSED,
    SUPERSEDED,
    WebhookDelivery,
)
from app.webhooks.signing import ensure_secret, signed_headers

# Overdue this long, an attempt's message was lost (or never sent): the sweep sends it.
LOST_AFTER = timedelta(seconds=60)
CLAIM = timedelta(seconds=120)  # an attempt in flight; after this the sweep may take over
MAX_DELAY = 4 * 3600.0


def record_final(
    session: Session, gen: Generation, settings: Settings, event: str | None = None
) -> str | None:
    """Record the final-state message for ``gen`` in the caller's transaction,
    so the transition and its webhook commit together (or not at all).
    Returns the delivery id to send after the commit (None: no webhook).
    Image URLs on ``settings``' public base (the runner needs no app).
    ``event``: the delivery's type, if not ``generation.<status>``."""
    from app.api.responses import generation_json  # it imports the pipeline, which imports us

    if not gen.webhook_url:
        return None
    session.flush()
    session.expire(gen, ["stages", "assets"])  # the payload shows what was just written
    event = event or f"generation.{gen.status}"
    payload = generation_json(gen, public_base(settings))
    return _queue(session, gen.user_id, gen.webhook_url, event, payload, generation_id=gen.id)


def record_batch_final(
    session: Session, batch: Batch, status: str, payload: dict[str, Any]
) -> str | None:
    """Record a batch's completion message (``batch.completed`` or
    ``batch.canceled``, the batch's JSON) in the caller's transaction: as
    ``record_final``, for the batch's own ``webhookUrl``."""
    if not batch.webhook_url:
        return None
    event = f"batch.{status}"
    return _queue(session, batch.user_id, batch.webhook_url, event, payload, batch_id=batch.id)


def _queue(
    session: Session,
    user_id: int,
    url: str,
    event_type: str,
    payload: dict[str, Any],
    generation_id: str | None = None,
    batch_id: str | None = None,
) -> str:
    """Add one pending delivery of ``event_type`` for its owner (a
    generation or a batch), the user's signing secret made first if they
    have none yet; returns its id. Its owner's older messages not yet
    delivered are superseded, never sent: a ``failed`` still being retried
    must not reach the receiver after the ``completed`` of a retried job."""
    ensure_secret(session.get(User, user_id))
    msg_id = new_id("msg")
    owner = (
        WebhookDelivery.generation_id == generation_id
        if generation_id
        else WebhookDelivery.batch_id == batch_id
    )
    session.execute(
        update(WebhookDelivery)
        .where(owner, WebhookDelivery.status == PENDING)
        .values(status=SUPERSEDED, last_error=f"superseded by {msg_id}", next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    delivery = WebhookDelivery(
        id=msg_id,
        user_id=user_id,
        event_type=event_type,
        url=url,
        payload=json.dumps(payload, separators=(",", ":")),
        status=PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
        generation_id=generation_id,
        batch_id=batch_id,
    )
    session.add(delivery)
    return delivery.id


def queue_final(services: Any, generation_id: str) -> None:
    """Record and send the final-state message in a transaction of its own
    (for callers that have already committed the transition)."""
    with services.db.session() as session:
        gen = session.get(Generation, generation_id)
        delivery_id = record_final(session, gen, services.settings) if gen is not None else None
    if delivery_id:
        send(services.db, services.celery, delivery_id, 1)


def send(
    db: Database, celery_app: Any, delivery_id: str, attempt_no: int, countdown: float = 0
) -> None:
    """Send an attempt's message. The broker refusing one due now, the
    delivery is marked overdue for the sweep's next pass (seconds), not left
    for the minute a lost message waits; a retry's keeps its due time."""
    try:
        args = (delivery_id, attempt_no)
        celery_app.send_task("webhooks.deliver", args=args, countdown=countdown or None)
    except Exception:  # noqa: BLE001 - broker down: the sweep (beat) sends it
        if countdown:
            return
        now = utcnow()
        with suppress(Exception), db.session() as session:
            mark = update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                # Not if the message got through after all and a worker claimed it.
                WebhookDelivery.attempts == attempt_no - 1,
                WebhookDelivery.next_attempt_at <= now,
            )
            session.execute(mark.values(next_attempt_at=now - LOST_AFTER))


def backoff(attempts: int, base: float) -> float:
    return min(MAX_DELAY, base * 2 ** (attempts - 1)) * random.uniform(0.9, 1.1)


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
        due = d.next_attempt_at or now
        if due > now + timedelta(seconds=1):
            return attempt_no, (due - now).total_seconds()
        d.attempts, d.next_attempt_at = attempt_no, now + CLAIM  # claimed
        secret = ensure_secret(session.get(User, d.user_id))
        url, payload, created = d.url, d.payload, d.created_at
        event = d.event_type
    try:
        code, error = _call(settings, url, delivery_id, secret, payload, now, event)
    except Refused as exc:
        return _record(db, delivery_id, REFUSED, None, f"refused: {exc.detail}")
    if error is None:
        return _record(db, delivery_id, DELIVERED, code, None)
    delay = backoff(attempt_no, settings.webhook_retry_base)
    if (now - created).total_seconds() + delay > settings.webhook_max_age:
        return _record(db, delivery_id, FAILED, code, f"gave up: {error}")
    _record(db, delivery_id, PENDING, code, error, now + timedelta(seconds=delay))
    return attempt_no + 1, delay


def _call(
    settings: Settings,
    url: str,
    msg_id: str,
    secret: str,
    payload: str,
    now: datetime,
    event: str,
) -> tuple[int | None, str | None]:
    """POST one signed attempt: ``(status code, error)``, the error None on a
    2xx. Raises Refused when the target fails the guard. ``BFF-Event`` names
    the message (``generation.completed``, ``generation.refined``,
    ``batch.canceled``, ...): the body is the generation or batch as GET
    shows it, and a refine's message has the same status as the completion's."""
    try:
        ips = resolve_target(url, settings)
    except Unresolved as exc:  # the resolver's outage, or the receiver's: retry
        return None, str(exc)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "designer-bff-webhooks/1",
        "BFF-Event": event,
        **signed_headers(secret, msg_id, now, payload),
    }
    try:
        code = post(url, ips, headers, payload.encode())
    except Exception as exc:  # network errors are the receiver's outage: retry
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return code, None if 200 <= code < 300 else f"HTTP {code}"


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
        if d.status == SUPERSEDED and status == PENDING:  # while in flight: no retry
            status, next_at, error = SUPERSEDED, None, d.last_error
        if status != PENDING and _owner_gone(session, d):  # sent after its delete: forgotten
            session.delete(d)
            return
        d.status, d.last_status_code, d.last_error = status, code, error
        d.next_attempt_at = next_at
        d.delivered_at = utcnow() if status == DELIVERED else None


def forget(session: Session, generation_ids: list[str], batch_id: str | None = None) -> None:
    """Deleted generations' (and a deleted batch's) messages go with them:
    each holds a copy of what was deleted (its prompt, its images' URLs).
    One still to be sent is sent first (its receiver was told to expect
    it), then forgotten (``_record``)."""
    owners = [WebhookDelivery.generation_id.in_(generation_ids)]
    if batch_id is not None:
        owners.append(WebhookDelivery.batch_id == batch_id)
    session.execute(
        delete(WebhookDelivery)
        .where(or_(*owners), WebhookDelivery.status != PENDING)
        .execution_options(synchronize_session=False)
    )


def _owner_gone(session: Session, d: WebhookDelivery) -> bool:
    if d.generation_id is not None:
        return session.get(Generation, d.generation_id) is None
    return d.batch_id is not None and session.get(Batch, d.batch_id) is None


def due_deliveries(db: Database, limit: int = 200) -> list[tuple[str, int]]:
    """Pending deliveries whose attempt is overdue (a lost message, a dead
    worker's claim): ``(id, next attempt number)`` for the sweep to send.
    Each is due again from now: a pass every few seconds sends it once a
    minute, not at every pass. (One being claimed is skipped.)"""
    now = utcnow()
    overdue = and_(
        WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at < now - LOST_AFTER
    )
    with db.session() as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(overdue)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:  # (still overdue: SQLite has no FOR UPDATE, and a claim may have come)
            due = update(WebhookDelivery).where(
                WebhookDelivery.id.in_([r[0] for r in rows]), overdue
            )
            session.execute(due.values(next_attempt_at=now))
    return [(rid, attempts + 1) for rid, attempts in rows]
