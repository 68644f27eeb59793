"""POST /api/providers/replicate/webhook: Replicate says a prediction ended.

No API key: the Standard Webhooks signature is the authentication
(``app.providers.replicate_webhooks``). Missing, wrong or stale signatures
are ``401``. A verified delivery is answered ``200`` whatever we make of it,
so Replicate stops retrying: a replayed ``webhook-id`` and a prediction no
stage waits on (an unknown, deleted or finished generation) are acknowledged
without effect (``woken: false`` and why). Otherwise the generation's
generate stage is sent now; it looks at the prediction itself.
"""

from __future__ import annotations

import logging

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, ValidationError

from app.api.common import parse_json, services
from app.api.errors import ApiError, service_unavailable
from app.api.responses import Out, respond
from app.pipeline.wake import NotSent, wake
from app.providers.base import ProviderError
from app.providers.replicate_webhooks import HEADERS, Refused, first_delivery, forget, verify

log = logging.getLogger(__name__)
bp = Blueprint("replicate_webhook", __name__, url_prefix="/api/providers/replicate")


class ReplicatePrediction(BaseModel):
    """What we read of Replicate's prediction JSON (the rest is ignored:
    the woken stage looks at the prediction itself)."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: str


class WebhookAck(Out):
    received: bool
    woken: bool
    reason: str | None  # why nothing was woken


@bp.post("/webhook")
def replicate_webhook():
    s = services()
    headers = {h: request.headers.get(h, "") for h in HEADERS}
    if not all(headers.values()):
        raise ApiError(401, "unauthorized", "a Replicate webhook is signed: " + ", ".join(HEADERS))
    body = request.get_data()
    try:
        verify(s.settings, body, headers)
    except Refused as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    except ProviderError as exc:  # Replicate unreachable: it retries the delivery later
        raise service_unavailable(f"cannot fetch Replicate's webhook secret: {exc}") from None
    try:
        pid = ReplicatePrediction.model_validate(parse_json(body, "the webhook body")).id
    except ValidationError:
        pid = None
    gen_id = request.args.get("generation")
    if not pid or not gen_id:
        return _ack("not a prediction of one of our generations")
    if not first_delivery(s.settings, headers["webhook-id"]):
        return _ack("a replayed delivery (webhook-id seen before)")
    try:
        why = wake(s.db, s.celery, gen_id, pid)
    except NotSent:
        forget(s.settings, headers["webhook-id"])  # Replicate's retry may wake it
        raise service_unavailable("the queue is unavailable") from None
    log.info("replicate webhook %s for %s: %s", pid, gen_id, why or "woken")
    return _ack(why)


def _ack(why: str | None):
    return respond(WebhookAck, {"received": True, "woken": why is None, "reason": why})
