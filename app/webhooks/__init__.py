"""Webhooks: the final generation POSTed to the job's ``webhookUrl``, signed per
the Standard Webhooks spec (standardwebhooks.com). The body is the generation
JSON exactly as ``GET /api/generate/<id>`` shows it; its ``status`` names the
event, recorded as ``generation.<status>`` in the delivery row.

- ``model``: the ``webhook_deliveries`` table.
- ``signing``: ``whsec_`` secrets and the signed headers (``standardwebhooks``).
- ``guard``: the SSRF guard, the same rules at submit and at delivery.
- ``delivery``: recording, sending, attempts with backoff, the sweep's query.
"""

from app.webhooks.delivery import attempt, due_deliveries, queue_final, record_final, send
from app.webhooks.guard import Refused, resolve_target, submit_url_problem
from app.webhooks.model import DELIVERED, FAILED, PENDING, REFUSED, WebhookDelivery
from app.webhooks.signing import ensure_secret, generate_secret

__all__ = [
    "DELIVERED",
    "FAILED",
    "PENDING",
    "REFUSED",
    "Refused",
    "WebhookDelivery",
    "attempt",
    "due_deliveries",
    "ensure_secret",
    "generate_secret",
    "queue_final",
    "record_final",
    "resolve_target",
    "send",
    "submit_url_problem",
]
