"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Request bodies come from the pydantic models the routes validate with, so the
document cannot drift from what the API accepts; response shapes are written
out here and checked against real responses by schemathesis in the test suite.
"""

from __future__ import annotations

from typing import Any

from app.api.schemas import FeedbackIn, ImageSubmit, PersonaIn, PersonaPatch, PromptSubmit
from app.domain.states import GENERATION_STATUSES

NULLABLE_STR = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}

STAGE = {
    "type": "object",
    "required": ["name", "status", "startedAt", "finishedAt", "durationMs", "attempts"],
    "properties": {
        "name": {
            "enum": ["analyze", "enhance", "persona", "route", "optimize", "generate", "store"]
        },
        "status": {"enum": ["pending", "running", "completed", "skipped", "failed"]},
        "startedAt": NULLABLE_STR,
        "finishedAt": NULLABLE_STR,
        "durationMs": NULLABLE_INT,
        "attempts": {"type": "integer", "minimum": 0},
        "error": NULLABLE_STR,
        "output": {"type": ["object", "null"]},
    },
}

ASSET = {
    "type": "object",
    "required": ["id", "url", "width", "height", "contentType", "fileSize"],
    "properties": {
        "id": {"type": "integer"},
        "url": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "contentType": {"type": "string"},
        "fileSize": {"type": "integer"},
    },
}

GENERATION = {
    "type": "object",
    "required": [
        "id",
        "status",
        "createdAt",
        "updatedAt",
        "completedAt",
        "mode",
        "settings",
        "provider",
        "model",
        "prompt",
        "stages",
        "assets",
        "cost",
        "error",
    ],
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": list(GENERATION_STATUSES)},
        "createdAt": {"type": "string"},
        "updatedAt": {"type": "string"},
        "completedAt": NULLABLE_STR,
        "mode": {"enum": ["prompt", "image"]},
        "settings": {"type": "object"},
        "provider": NULLABLE_STR,
        "model": NULLABLE_STR,
        "personaId": NULLABLE_STR,
        "prompt": {
            "type": "object",
            "properties": {k: NULLABLE_STR for k in ("original", "enhanced", "final", "negative")},
        },
        "stages": {"type": "array", "items": _ref("Stage")},
        "assets": {"type": "array", "items": _ref("Asset")},
        "cost": {"type": "number"},
        "error": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["stage", "message"],
                    "properties": {"stage": NULLABLE_STR, "message": {"type": "string"}},
                },
            ]
        },
        "webhookUrl": NULLABLE_STR,
        "links": {"type": "object"},
    },
}

HEALTH = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string"},
        "checks": {"type": "object", "required": ["database", "broker", "storage"]},
    },
}

ACCEPTED = {
    "type": "object",
    "required": ["id", "status", "links"],
    "properties": {
        "id": {"type": "string"},
        "status": {"const": "pending"},
        "links": {
            "type": "object",
            "required": ["self"],
            "properties": {"self": {"type": "string"}},
        },
    },
}

PERSONA = {
    "type": "object",
    "required": ["id", "name", "description", "keywords", "palette", "aesthetic", "isDefault"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "palette": {"type": "array", "items": {"type": "string"}},
        "aesthetic": NULLABLE_STR,
        "isDefault": {"type": "boolean"},
        "createdAt": {"type": "string"},
        "updatedAt": {"type": "string"},
    },
}

FEEDBACK = {
    "type": "object",
    "required": ["id", "generationId", "feedbackType"],
    "properties": {
        "id": {"type": "integer"},
        "generationId": {"type": "string"},
        "assetId": NULLABLE_INT,
        "feedbackType": {"type": "string"},
        "rating": NULLABLE_INT,
        "comment": NULLABLE_STR,
        "createdAt": {"type": "string"},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", **_json(_ref("Error"))} for c in codes}


def _op(
    summary: str, ok: dict[str, Any], errors=(401,), body=None, params=None, auth: bool = True
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    if not auth:
        op["security"] = []
    return op


GEN_ID = {"name": "generation_id", "in": "path", "required": True, "schema": {"type": "string"}}
PERSONA_ID = {"name": "persona_id", "in": "path", "required": True, "schema": {"type": "string"}}


def build_spec() -> dict[str, Any]:
    submit_errors = (400, 401, 403, 409, 413, 415, 422, 429)
    gen_ok = {"200": {"description": "the generation", **_json(_ref("Generation"))}}
    accepted = {"202": {"description": "accepted", **_json(_ref("Accepted"))}}
    multipart = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "settings": {"type": "string", "description": "settings as JSON"},
                    "prompt": {"type": "string"},
                    "webhookUrl": {"type": "string"},
                },
            }
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Designer BFF",
            "version": "1.0.0",
            "description": "Garment photo or prompt in, finished stored images out.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": ERROR,
                "Stage": STAGE,
                "Asset": ASSET,
                "Generation": GENERATION,
                "Accepted": ACCEPTED,
                "Persona": PERSONA,
                "Feedback": FEEDBACK,
                "Health": HEALTH,
                **_request_schemas(),
            },
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/generate/from-prompt": {
                "post": _op(
                    "Submit a text prompt",
                    accepted,
                    submit_errors,
                    body={"application/json": {"schema": _ref("PromptSubmit")}},
                )
            },
            "/api/generate/from-image": {
                "post": _op(
                    "Submit a garment photo (multipart) or a ready VLT spec (JSON)",
                    accepted,
                    submit_errors,
                    body={**multipart, "application/json": {"schema": _ref("ImageSubmit")}},
                )
            },
            "/api/generate": {
                "get": _op(
                    "The caller's generations, newest first",
                    {
                        "200": {
                            "description": "a page",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["items", "nextCursor"],
                                    "properties": {
                                        "items": {"type": "array", "items": _ref("Generation")},
                                        "nextCursor": NULLABLE_STR,
                                    },
                                }
                            ),
                        }
                    },
                    (400, 401, 422),
                    params=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": list(GENERATION_STATUSES)},
                        },
                    ],
                )
            },
            "/api/generate/{generation_id}": {
                "get": _op("One generation", gen_ok, (401, 404), params=[GEN_ID]),
                "delete": _op(
                    "Cancel if running, delete rows and stored objects",
                    {"204": {"description": "deleted"}},
                    (401, 404, 503),
                    params=[GEN_ID],
                ),
            },
            "/api/generate/{generation_id}/cancel": {
                "post": _op(
                    "Cancel a pending or processing generation",
                    gen_ok,
                    (401, 404, 409),
                    params=[GEN_ID],
                )
            },
            "/api/generate/{generation_id}/retry": {
                "post": _op(
                    "Resume a failed generation from its first unfinished stage",
                    {"202": {"description": "resumed", **_json(_ref("Generation"))}},
                    (401, 404, 409),
                    params=[GEN_ID],
                )
            },
            "/api/generate/{generation_id}/feedback": {
                "post": _op(
                    "Feedback on a generation",
                    {"201": {"description": "recorded", **_json(_ref("Feedback"))}},
                    (400, 401, 404, 415, 422),
                    params=[GEN_ID],
                    body={"application/json": {"schema": _ref("FeedbackIn")}},
                )
            },
            "/api/generate/{generation_id}/events": {
                "get": _op(
                    "Server-Sent Events: a `stage` event per stage change, then `done`",
                    {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        }
                    },
                    (401, 404),
                    params=[GEN_ID],
                )
            },
            "/api/personas": {
                "get": _op(
                    "The caller's personas",
                    {
                        "200": {
                            "description": "personas",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["items"],
                                    "properties": {
                                        "items": {"type": "array", "items": _ref("Persona")}
                                    },
                                }
                            ),
                        }
                    },
                ),
                "post": _op(
                    "Create a persona",
                    {"201": {"description": "created", **_json(_ref("Persona"))}},
                    (400, 401, 415, 422),
                    body={"application/json": {"schema": _ref("PersonaIn")}},
                ),
            },
            "/api/personas/{persona_id}": {
                "get": _op(
                    "One persona",
                    {"200": {"description": "persona", **_json(_ref("Persona"))}},
                    (401, 404),
                    params=[PERSONA_ID],
                ),
                "patch": _op(
                    "Change a persona",
                    {"200": {"description": "persona", **_json(_ref("Persona"))}},
                    (400, 401, 404, 415, 422),
                    params=[PERSONA_ID],
                    body={"application/json": {"schema": _ref("PersonaPatch")}},
                ),
                "delete": _op(
                    "Delete a persona",
                    {"204": {"description": "deleted"}},
                    (401, 404),
                    params=[PERSONA_ID],
                ),
            },
            "/api/stats": {
                "get": _op(
                    "The caller's statistics",
                    {"200": {"description": "stats", **_json({"type": "object"})}},
                )
            },
            "/api/webhooks/secret": {
                "get": _op(
                    "The caller's webhook signing secret",
                    {
                        "200": {
                            "description": "secret",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["secret"],
                                    "properties": {
                                        "secret": {"type": "string", "pattern": "^whsec_"}
                                    },
                                }
                            ),
                        }
                    },
                )
            },
            "/health": {
                "get": _op(
                    "Health of database, broker and storage",
                    {
                        "200": {"description": "healthy", **_json(_ref("Health"))},
                        "503": {"description": "a dependency is down", **_json(_ref("Health"))},
                    },
                    (),
                    auth=False,
                )
            },
        },
    }


def _request_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (PromptSubmit, ImageSubmit, FeedbackIn, PersonaIn, PersonaPatch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out
