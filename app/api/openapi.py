"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.
Every schema comes from the pydantic models the routes validate with
(``schemas``) and answer with (``responses``), so the document cannot drift;
the routes are declared once below, as data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api import batch_responses as b
from app.api import ops_responses as ops
from app.api import responses as r
from app.api.batch_schemas import BatchSubmit
from app.api.openapi_webhooks import REPLICATE_WEBHOOK_PARAMS, webhooks
from app.api.providers import ProviderList
from app.api.replicate_webhook import ReplicatePrediction, WebhookAck
from app.api.schemas import (
    FeedbackIn,
    ImageSubmit,
    PersonaIn,
    PersonaPatch,
    PromptSubmit,
    RefineIn,
    SpecSubmit,
)
from app.api.uploads import ALLOWED
from app.domain.batches import CURSOR_PATTERN as BATCH_CURSOR_PATTERN
from app.domain.generations import CURSOR_PATTERN
from app.domain.states import GENERATION_STATUSES

Content = dict[str, Any]  # media type -> {"schema": ...}


@dataclass(frozen=True)
class Route:
    op: str  # its operationId: a generated client's method name
    method: str
    path: str
    summary: str
    answer: type[BaseModel] | Content | None  # a model's JSON, other content, or no body
    ok: tuple[int, ...] = (200,)  # the statuses that answer with ``answer``
    errors: tuple[int, ...] = (401,)  # the statuses that answer with ``ErrorOut``
    body: type[BaseModel] | None = None  # a JSON request body
    form: type[BaseModel] | None = None  # the fields of a multipart form, beside the image
    query: tuple[dict[str, Any], ...] = ()
    auth: bool = True
    headers: tuple[str, ...] = ()  # request headers it reads (``HEADERS``)


IMAGE_TYPES = ", ".join(content_type for content_type, _ in ALLOWED.values())
EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
}


def _cursor(pattern: str) -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern}
    return {"name": "cursor", "in": "query", "description": "a page's nextCursor", "schema": schema}


PAGE_QUERY = (
    LIMIT,
    _cursor(CURSOR_PATTERN),
    {"name": "status", "in": "query", "schema": {"enum": list(GENERATION_STATUSES)}},
    {
        "name": "batchId",
        "in": "query",
        "description": "only this batch's generations (404 if it is not one of yours)",
        "schema": {"type": "string"},
    },
)
BATCH_PAGE_QUERY = (LIMIT, _cursor(BATCH_CURSOR_PATTERN))
# OpenAPI 3.1: bytes are a media type with no schema ("format: binary" is 3.0's;
# 3.1 validators read it as a text string and refuse every real ZIP).
ZIP: dict[str, Any] = {"application/zip": {}}
HEADERS = {  # the request headers routes read, described once
    "Idempotency-Key": {
        "description": "a retry with the same key (and request) is answered again, "
        "acting on nothing twice; the key with another request is 409",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    "If-None-Match": {
        "description": "an earlier answer's ETag: 304, no body, while nothing changed",
        "schema": {"type": "string"},
    },
    "Last-Event-ID": {
        "description": "the id of the last event received: the stream resumes after it",
        "schema": {"type": "string"},
    },
}
KEYED = ("Idempotency-Key",)
# The response headers an answer carries, by status (``Location``: every 202).
ANSWER_HEADERS = {
    "Location": {"description": "the resource to poll", "schema": {"type": "string"}},
    "ETag": {"description": "send it back in If-None-Match", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "seconds to wait before asking again (a generation not final: until"
        " a poll is worth making)",
        "schema": {"type": "integer"},
    },
}
# Any request: its head refused (app/api/protocol.py), or a dependency it
# needs down (the database: app/api/errors.py).
ANY_ERRORS = (414, 431, 503)
SUBMIT_ERRORS = (400, 401, 403, 409, 413, 415, 422, 429)
BODY_ERRORS = (400, 401, 413, 415, 422)
GEN, PERSONA = "/api/generate/{generation_id}", "/api/personas/{persona_id}"
BATCH = "/api/batches/{batch_id}"

# fmt: off
ROUTES = (
    Route("submitPrompt", "post", "/api/generate/from-prompt", "Submit a text prompt",
          r.AcceptedOut, (202,), SUBMIT_ERRORS, PromptSubmit, headers=KEYED),
    Route("submitImage", "post", "/api/generate/from-image",
          "Submit a garment photo (multipart) or a ready VLT spec (JSON)",
          r.AcceptedOut, (202,), SUBMIT_ERRORS, SpecSubmit, form=ImageSubmit, headers=KEYED),
    Route("listGenerations", "get", "/api/generate", "The caller's generations, newest first",
          r.GenerationPage, errors=(400, 401, 404, 422), query=PAGE_QUERY),
    Route("getGeneration", "get", GEN, "One generation",
          r.GenerationOut, (200, 304), (401, 404), headers=("If-None-Match",)),
    Route("deleteGeneration", "delete", GEN, "Cancel if running, delete rows and stored objects",
          None, (204,), (401, 404, 503)),
    Route("cancelGeneration", "post", f"{GEN}/cancel",
          "Cancel a pending or processing generation, or a completed one's running refine",
          r.GenerationOut, errors=(400, 401, 404, 409), headers=KEYED),
    Route("retryGeneration", "post", f"{GEN}/retry",
          "Resume a failed generation from its first unfinished stage",
          r.GenerationOut, (202,), (400, 401, 404, 409, 429), headers=KEYED),
    Route("giveFeedback", "post", f"{GEN}/feedback",
          "Feedback: a second heart or outlier withdraws the first (200); a rating replaces",
          r.FeedbackOut, (200, 201), (*BODY_ERRORS, 404, 409), FeedbackIn, headers=KEYED),
    Route("refineAsset", "post", f"{GEN}/assets/{{asset_id}}/refine",
          "Upscale and/or cut out one image of a completed generation: adds variant assets",
          r.GenerationOut, (202,), (*BODY_ERRORS, 403, 404, 409, 429), RefineIn, headers=KEYED),
    Route("streamGenerationEvents", "get", f"{GEN}/events",
          "Server-Sent Events: `stage` ({stage, status, durationMs, attempt}) per stage"
          " change, then `done` (the final generation), or `gone` ({id}) when deleted",
          EVENT_STREAM, errors=(401, 404, 429, 503), headers=("Last-Event-ID",)),
    Route("submitBatch", "post", "/api/batches",
          "Submit a batch: up to 100 items, or a matrix expanded into at most 100",
          b.BatchAcceptedOut, (202,), SUBMIT_ERRORS, BatchSubmit, headers=KEYED),
    Route("listBatches", "get", "/api/batches", "The caller's batches, newest first",
          b.BatchPage, errors=(400, 401, 422), query=BATCH_PAGE_QUERY),
    Route("getBatch", "get", BATCH, "One batch: status, counts, cost",
          b.BatchOut, errors=(401, 404)),
    Route("deleteBatch", "delete", BATCH,
          "Cancel what is running, delete the batch's rows and stored objects",
          None, (204,), (401, 404, 503)),
    Route("cancelBatch", "post", f"{BATCH}/cancel",
          "Cancel every generation of the batch not yet final",
          b.BatchOut, errors=(401, 404, 409)),
    Route("downloadBatchArchive", "get", f"{BATCH}/archive",
          "A ZIP of the batch's final images and manifest.csv, streamed",
          ZIP, errors=(401, 404)),
    Route("listPersonas", "get", "/api/personas", "The caller's personas", r.PersonaPage),
    Route("createPersona", "post", "/api/personas", "Create a persona",
          r.PersonaOut, (201,), (*BODY_ERRORS, 409), PersonaIn, headers=KEYED),
    Route("getPersona", "get", PERSONA, "One persona", r.PersonaOut, errors=(401, 404)),
    Route("updatePersona", "patch", PERSONA, "Change a persona",
          r.PersonaOut, errors=(*BODY_ERRORS, 404), body=PersonaPatch),
    Route("deletePersona", "delete", PERSONA, "Delete a persona", None, (204,), (401, 404)),
    Route("getStats", "get", "/api/stats", "The caller's statistics", ops.StatsOut),
    Route("getWebhookSecret", "get", "/api/webhooks/secret",
          "The caller's webhook signing secret", ops.WebhookSecretOut),
    Route("listProviders", "get", "/api/providers",
          "Each model: availability, capabilities, price per image", ProviderList),
    Route("receiveReplicateWebhook", "post", "/api/providers/replicate/webhook",
          "Replicate's signed prediction webhooks (no API key: the signature is checked)",
          WebhookAck, errors=(400, 401, 503), body=ReplicatePrediction,
          query=REPLICATE_WEBHOOK_PARAMS, auth=False),
    Route("getHealth", "get", "/health", "Health of database, broker, storage, a separate Redis",
          ops.HealthOut, (200, 503), (), auth=False),
)
# fmt: on


def build_spec() -> dict[str, Any]:
    refs, schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, refs, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Designer BFF",
            "version": "1.0.0",
            "description": "Garment photo or prompt in, finished stored images out.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"apiKey": []}],
        "paths": paths,
        "webhooks": webhooks(refs),
    }


def _operation(
    route: Route, refs: dict[type[BaseModel], Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    def answer(status: int, content: type[BaseModel] | Content | None) -> dict[str, Any]:
        if isinstance(content, type):
            content = {"application/json": {"schema": refs[content]}}
        out: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if headers := _answer_headers(route, status):
            out["headers"] = {name: ANSWER_HEADERS[name] for name in headers}
        return out | {"content": content} if content and status != 304 else out

    op: dict[str, Any] = {
        "operationId": route.op,
        "summary": route.summary,
        "responses": {str(s): answer(s, route.answer) for s in route.ok}
        | {
            str(s): answer(s, r.ErrorOut) for s in (*route.errors, *ANY_ERRORS) if s not in route.ok
        },
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ] + list(route.query)
    params += [{"name": name, "in": "header", **HEADERS[name]} for name in route.headers]
    if params:
        op["parameters"] = params
    if route.body is not None:
        content = {"application/json": {"schema": refs[route.body]}}
        if route.form is not None:
            content = _multipart(schemas[route.form.__name__]["properties"]) | content
        op["requestBody"] = {"required": True, "content": content}
    if not route.auth:
        op["security"] = []
    return op


def _answer_headers(route: Route, status: int) -> tuple[str, ...]:
    if status == 202:
        return ("Location",)
    if route.op == "getGeneration" and status in (200, 304):
        return ("ETag", "Retry-After") if status == 200 else ("ETag",)
    if status == 429 or (status == 503 and status not in route.ok):  # (health's: its body)
        return ("Retry-After",)
    return ()


def _multipart(fields: dict[str, Any]) -> Content:
    """from-image's form: the image, and ``ImageSubmit``'s fields but the
    vltSpec, each a string (a field is sent or not: never null) but
    ``settings``, a JSON part."""

    def one(schema: dict[str, Any]) -> dict[str, Any]:
        if "anyOf" not in schema:
            return schema
        [text] = [kind for kind in schema["anyOf"] if kind.get("type") == "string"]
        return {k: v for k, v in schema.items() if k not in ("anyOf", "default", "title")} | text

    properties = {"image": {"type": "string", "format": "binary"}} | {
        name: one(schema) for name, schema in fields.items()
    }
    return {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": properties,
                "additionalProperties": False,
            },
            "encoding": {
                "image": {"contentType": IMAGE_TYPES},
                "settings": {"contentType": "application/json"},
            },
        }
    }


def _schemas() -> tuple[dict[type[BaseModel], Any], dict[str, Any]]:
    """Refs to, and the schemas of, every model the routes name (and the
    models those use): requests as validated, answers as serialised."""
    bodies = dict.fromkeys(m for route in ROUTES for m in (route.body, route.form) if m is not None)
    answers = dict.fromkeys(route.answer for route in ROUTES if isinstance(route.answer, type))
    refs, top = models_json_schema(
        [(m, "validation") for m in bodies]
        + [(m, "serialization") for m in (*answers, r.ErrorOut)],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    return {model: ref for (model, _mode), ref in refs.items()}, top["$defs"]
