"""/openapi.json describes the API, and the API keeps to it: schemathesis,
with every check, runs its coverage, fuzzing and stateful phases against the
real server (gunicorn with gunicorn.conf.py): no 5xx, every answer as
documented, every request the document calls invalid refused and every valid
one accepted (tests/support/st_hooks.py: the state no schema can describe)."""

from __future__ import annotations

import os
import re
import subprocess

from app.api.openapi import build_spec
from app.api.schemas import field_title
from tests.support.live import live_api
from tests.support.procs import BIN, ROOT


def test_openapi_document_describes_exactly_the_api_routes(app, client):
    documented = {
        (path, method)
        for path, ops in client.get("/openapi.json").json["paths"].items()
        for method in ops
    }
    served = {
        (re.sub(r"<(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api/", "/health"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert len(served) >= 17 and documented == served


def test_every_operation_is_named_and_says_the_headers_it_reads_and_sends():
    """What a generated client needs: method names, the Idempotency-Key it may
    send, the ETag and Location it gets back, the 304 of a revalidation."""
    paths = build_spec()["paths"]
    ops = [op for methods in paths.values() for op in methods.values()]
    names = [op["operationId"] for op in ops]
    assert len(set(names)) == len(names) == len(ops)

    def headers(op):
        return {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}

    keyed = {op["operationId"] for op in ops if "Idempotency-Key" in headers(op)}
    assert keyed == {
        "submitPrompt", "submitImage", "submitBatch", "giveFeedback", "refineAsset",
        "cancelGeneration", "retryGeneration", "createPersona",
    }  # fmt: skip
    show = paths["/api/generate/{generation_id}"]["get"]
    assert headers(show) == {"If-None-Match"} and "content" not in show["responses"]["304"]
    assert set(show["responses"]["200"]["headers"]) == {"ETag", "Retry-After"}
    accepted = [op["responses"]["202"] for op in ops if "202" in op["responses"]]
    assert len(accepted) == 5 and all("Location" in a["headers"] for a in accepted)


def test_every_field_is_titled_in_words():
    """Before, pydantic ran a camelCase name's words together in its title:
    matrix.promptsText was "Promptstext", createdAt "Createdat"."""
    schemas = build_spec()["components"]["schemas"]
    assert schemas["BatchMatrix"]["properties"]["promptsText"]["title"] == "Prompts Text"
    assert schemas["GenerationOut"]["properties"]["createdAt"]["title"] == "Created At"
    titles = {
        (model, name): prop["title"]
        for model, schema in schemas.items()
        if model != "VltRecord"  # the pipeline's vltSpec, not the API's own model
        for name, prop in schema.get("properties", {}).items()
        if "title" in prop
    }
    assert len(titles) > 50
    assert {k: t for k, t in titles.items() if t != field_title(k[1])} == {}


def test_the_webhooks_a_receiver_gets_are_described():
    """Their bodies (the job as GET shows it), every event the code sends,
    and the headers it signs them with."""
    from datetime import UTC, datetime

    from app.domain.states import CANCELED, COMPLETED, FINAL
    from app.webhooks.signing import signed_headers

    hooks = build_spec()["webhooks"]
    signed = set(signed_headers("whsec_" + "A" * 32, "msg_1", datetime.now(UTC), "{}"))
    sent = {
        "generationFinished": ("GenerationOut", {f"generation.{s}" for s in FINAL} | {
            "generation.refined"}),
        "batchFinished": ("BatchOut", {f"batch.{s}" for s in (COMPLETED, CANCELED)}),
    }  # fmt: skip
    assert set(hooks) == set(sent)
    for name, (model, events) in sent.items():
        post = hooks[name]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body == f"#/components/schemas/{model}"
        headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
        assert set(headers) == signed | {"BFF-Event"}
        assert set(headers["BFF-Event"]["schema"]["enum"]) == events


def test_the_live_server_keeps_to_its_document(tmp_path):
    # Schemathesis cannot re-check a multipart body holding a file once a
    # stateful link fills a value in (it counts every such body invalid), so
    # from-image is left to the coverage and fuzzing phases.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[[operations]]\ninclude-path = "/api/generate/from-image"\n'
        "phases.stateful.enabled = false\n"
    )
    with live_api(tmp_path, BFF_SUBMIT_RATE_LIMIT="0") as api:
        run = subprocess.run(
            [
                BIN / "st", "--config-file", config, "run", f"{api.base_url}/openapi.json",
                "--checks", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", "20", "--seed", "1", "--workers", "1",
                "--header", f"Authorization: Bearer {api.key}",
                "--exclude-path-regex", "/events$",  # a stream: tests/test_events.py
                "--no-color",
            ],
            env={**os.environ, "PYTHONPATH": ROOT, "SCHEMATHESIS_HOOKS": "tests.support.st_hooks"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    operations = sum(len(ops) for ops in build_spec()["paths"].values()) - 1  # all but /events
    assert re.search(rf"Tested: {operations}\b", run.stdout), run.stdout[-2000:]


def test_the_document_is_valid_openapi_3_1(client):
    """What generated clients and validators read first: a field's default
    that its own type refuses, or 3.0's ``format: binary`` for a ZIP's bytes,
    made openapi-core refuse the document or every real archive."""
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").json
    validate(document)
    archive = document["paths"]["/api/batches/{batch_id}/archive"]["get"]["responses"]["200"]
    assert archive["content"] == {"application/zip": {}}
    # Any route answers 503 (with Retry-After) when the database is down; health its own body.
    for path, ops in document["paths"].items():
        for op in ops.values():
            answer = op["responses"]["503"]
            body = answer["content"]["application/json"]["schema"]["$ref"]
            if path == "/health":
                assert body.endswith("/HealthOut") and "headers" not in answer
            else:
                assert body.endswith("/ErrorOut") and "Retry-After" in answer["headers"]


def test_every_field_the_document_names_is_camel_case(client):
    """The contract: all JSON uses camelCase (``/api/stats`` once wrote
    ``in_progress``): no property of any body, ours or a webhook's, has an
    underscore."""
    snake: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            snake.extend(f"{where}.{k}" for k in node.get("properties") or {} if "_" in k)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(client.get("/openapi.json").json, "")
    assert snake == []
