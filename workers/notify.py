"""Thin Celery tasks for webhooks: one delivery attempt (queue ``generation``,
with the other calls out: a receiver may take its 10 s), and the sweep that
re-sends deliveries whose message was lost (``pipeline``)."""

from __future__ import annotations

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import OperationalError

from app.webhooks import attempt, due_deliveries, send
from workers.tasks import beat_pass

# A worker holds a countdown's message unacked until it runs: Redis delivers
# one held past its visibility timeout (1 h) again, and RabbitMQ closes the
# channel of one held past its consumer_timeout (30 min by default, delivery
# to ack: the run's own seconds count too), taking every unacked message of
# that worker with it. So long waits go in hops well inside both; attempt()
# drops the duplicates.
MAX_COUNTDOWN = 900.0


@shared_task(
    name="webhooks.deliver",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=20,
)
def deliver(delivery_id: str, attempt_no: int) -> None:
    s = current_app.extensions["bff"]
    nxt = attempt(s.db, s.settings, delivery_id, attempt_no)
    if nxt is not None:
        next_no, wait = nxt
        send(s.db, s.celery, delivery_id, next_no, min(wait, MAX_COUNTDOWN))


@shared_task(name="webhooks.sweep", acks_late=True)
def sweep() -> None:
    s = current_app.extensions["bff"]
    with beat_pass("webhooks.sweep"):
        for delivery_id, attempt_no in due_deliveries(s.db):
            send(s.db, s.celery, delivery_id, attempt_no)
