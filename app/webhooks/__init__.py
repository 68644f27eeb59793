"""Webhooks: the final generation (as ``GET /api/generate/<id>`` shows it)
POSTed to the job's ``webhookUrl``, signed per the Standard Webhooks spec:
the table (``model``), signing, the SSRF guard, and delivery with retries."""

from app.webhooks.delivery import (
    attempt,
    due_deliveries,
    forget,
    queue_final,
    record_batch_final,
    record_final,
    send,
)
from app.webhooks.guard import Refused, resolve_target, submit_url_problem, url_checker
from app.webhooks.model import REFUSED, WebhookDelivery
from app.webhooks.signing import ensure_secret, generate_secret

__all__ = [
    "REFUSED",
    "Refused",
    "WebhookDelivery",
    "attempt",
    "due_deliveries",
    "ensure_secret",
    "forget",
    "generate_secret",
    "queue_final",
    "record_batch_final",
    "record_final",
    "resolve_target",
    "send",
    "submit_url_problem",
    "url_checker",
]
