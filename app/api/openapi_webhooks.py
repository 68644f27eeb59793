"""The messages this service POSTs to a job's ``webhookUrl``, for the
``webhooks`` section of ``/openapi.json`` (OpenAPI 3.1): a client's
generator then types the receiver's body as it types ``GET``'s answer.
What is sent and how lives in ``app/webhooks/delivery.py``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.api import batch_responses as b
from app.api import responses as r

# Standard Webhooks' headers: on the messages we send, and on Replicate's to us.
_SIGNED = {
    "webhook-id": "the message's id: the same on every attempt (deduplicate by it)",
    "webhook-timestamp": "when this attempt was signed, in seconds since the epoch",
    "webhook-signature": "v1,<base64 HMAC-SHA256> with the secret of GET /api/webhooks/secret",
}


def _header(name: str, description: str | None = None) -> dict[str, Any]:
    header = {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
    if description:
        header["description"] = description
    return header


REPLICATE_WEBHOOK_PARAMS = (
    {"name": "generation", "in": "query", "description": "the generation the prediction is for",
     "schema": {"type": "string"}},
    *(_header(name) for name in _SIGNED),  # (signed with Replicate's secret, not ours)
)  # fmt: skip
_ANSWERS = {
    "2XX": {"description": "received: the message is not sent again"},
    "default": {
        "description": "any other answer, or none within 10 s: sent again with exponential"
        " backoff for up to BFF_WEBHOOK_MAX_AGE (a day by default), unless a newer"
        " message about the same job supersedes it"
    },
}
# (name, what it is, its BFF-Event values, its body: the job as GET shows it)
_MESSAGES: tuple[tuple[str, str, tuple[str, ...], type[BaseModel]], ...] = (
    (
        "generationFinished",
        "A generation completed, failed or was canceled; or its refine asked for after it"
        " completed ended (generation.refined: its variants, or the refine's error)",
        ("generation.completed", "generation.failed", "generation.canceled", "generation.refined"),
        r.GenerationOut,
    ),
    (
        "batchFinished",
        "Every generation of a batch is final, or the batch was canceled",
        ("batch.completed", "batch.canceled"),
        b.BatchOut,
    ),
)


def webhooks(refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
    """The ``webhooks`` object, its bodies by the schema refs of ``refs``."""
    return {
        name: {
            "post": {
                "summary": summary,
                "security": [],  # signed, not keyed
                "parameters": [
                    {"name": "BFF-Event", "in": "header", "required": True,
                     "schema": {"enum": list(events)}},
                    *(_header(h, d) for h, d in _SIGNED.items()),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": refs[model]}},
                },
                "responses": _ANSWERS,
            }
        }
        for name, summary, events, model in _MESSAGES
    }  # fmt: skip
