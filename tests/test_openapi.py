"""/openapi.json describes the API, and the API keeps to it: schemathesis
generates requests (valid and invalid) for every operation against the real
app and checks there is never a 5xx and every response matches the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import make_user

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_openapi_document_lists_every_contract_route(client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, method in [
        ("/api/generate/from-prompt", "post"),
        ("/api/generate/from-image", "post"),
        ("/api/generate/{generation_id}", "get"),
        ("/api/generate", "get"),
        ("/api/generate/{generation_id}/feedback", "post"),
        ("/api/generate/{generation_id}/cancel", "post"),
        ("/api/generate/{generation_id}/retry", "post"),
        ("/api/generate/{generation_id}", "delete"),
        ("/health", "get"),
        ("/api/generate/{generation_id}/events", "get"),
        ("/api/personas", "get"),
        ("/api/personas", "post"),
        ("/api/personas/{persona_id}", "patch"),
        ("/api/stats", "get"),
        ("/api/webhooks/secret", "get"),
    ]:
        assert method in paths[path], (path, method)


def test_api_conforms_to_its_schema(app):
    # Driven through hypothesis directly: schemathesis' pytest plugin does not
    # support pytest 9's node ids yet.
    from hypothesis import given

    user = make_user(app, "fuzz")
    seeded = app.test_client().post(
        "/api/generate/from-prompt", json={"prompt": "seed dress"}, headers=user.headers
    )
    assert seeded.status_code == 202
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    tested = []
    for operation in operations:
        if operation.path.endswith("/events"):
            continue  # a stream: tested in its own tests

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            case.call_and_validate(headers=user.headers, checks=CHECKS)

        check()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 15, tested
