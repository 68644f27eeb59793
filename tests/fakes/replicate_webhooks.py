"""Webhooks as Replicate sends them, for the fake Replicate: a create may
carry ``webhook`` (a URL) and ``webhook_events_filter`` (start, output, logs,
completed); when such a prediction ends, its JSON is POSTed there, signed per
Standard Webhooks with the secret ``GET /v1/webhooks/default/secret`` serves.
A mixin: it uses the server's ``lock``, ``predictions``, ``status`` and
``render``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx

from .replicate_models import invalid_field

WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
FINAL = ("succeeded", "failed", "canceled", "aborted")


class WebhookSender:
    lock: Any
    predictions: dict[str, dict[str, Any]]
    webhook_secret: str
    lose_webhooks: bool

    @staticmethod
    def invalid_webhook(body: dict[str, Any]) -> list[dict[str, str]]:
        invalid = []
        hook, events = body.get("webhook"), body.get("webhook_events_filter")
        if hook is not None and not (
            isinstance(hook, str) and hook.startswith(("http://", "https://"))
        ):
            invalid.append(invalid_field("format", "webhook", "webhook must be a URI"))
        if events is not None and (
            not isinstance(events, list) or any(e not in WEBHOOK_EVENTS for e in events)
        ):
            must = "webhook_events_filter items must be one of: " + ", ".join(WEBHOOK_EVENTS)
            invalid.append(invalid_field("enum", "webhook_events_filter", must))
        return invalid

    def notify(self, pid: str) -> None:
        """The ``completed`` webhook, once, if the prediction has ended."""
        with self.lock:
            p = self.predictions.get(pid)
            if p is None or p["notified"] or self.status(p)[0] not in FINAL:
                return
            p["notified"] = True
            if self.lose_webhooks or "completed" not in p["events"]:
                return
            body, url = json.dumps(self.render(pid)), p["webhook"]
        headers = self.signed(f"msg_{secrets.token_hex(8)}", int(time.time()), body)
        try:
            status = httpx.post(url, content=body, headers=headers, timeout=10).status_code
        except httpx.HTTPError:
            status = 0
        with self.lock:
            self.counters["webhook"] += 1
            self.webhook_answers.append(status)

    def signed(self, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
        """Replicate's headers: HMAC-SHA256 of ``id.timestamp.body`` keyed by the
        secret's base64 part (done by hand: our API verifies with the package)."""
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
