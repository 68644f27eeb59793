"""/api/generate over the Flask test client: auth, validation, idempotency,
pagination, the generation's JSON shape, cancel, retry, delete, feedback."""

from __future__ import annotations

import io
import os
import re

import jsonschema_rs  # schemathesis' own validator
import pytest
from PIL import Image
from sqlalchemy import func, select

from app import create_app
from app.api import responses as r
from app.api.common import MAX_JSON_BYTES
from app.api.openapi import build_spec
from app.domain.models import Generation, GenerationAsset, GenerationFeedback, GenerationStage
from app.pipeline import STAGES
from app.pipeline.context import StageFailed
from app.pipeline.runner import STAGE_FUNCS
from tests.conftest import make_user
from tests.support.pipeline import (
    load,
    png_bytes,
    run_all,
    services,
    submit_image,
    submit_prompt,
)

PROMPT = "/api/generate/from-prompt"
COMPONENTS = build_spec()["components"]


def conforms(body, model: type) -> None:
    """``body`` is what /openapi.json promises for ``model``'s answers."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}", "components": COMPONENTS}
    jsonschema_rs.Draft202012Validator(schema, validate_formats=True).validate(body)


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    conforms(body, r.ErrorOut)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def completed(app, client, user) -> str:
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    assert load(app, gen_id)["status"] == "completed"
    return gen_id


def failed(app, client, user, monkeypatch, stage: str = "generate") -> str:
    """A prompt job failed at ``stage`` (the stages before it done)."""

    def broken(ctx):
        raise StageFailed("REPLICATE_API_TOKEN not configured")

    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, stage, broken)
        gen_id = submit_prompt(client, user.headers)
        run_all(app, gen_id)
    assert load(app, gen_id)["status"] == "failed"
    return gen_id


# ------------------------------------------------------------------- auth


def test_no_key_is_401(client):
    err = assert_error(client.post(PROMPT, json={"prompt": "x"}), 401, "unauthorized")
    assert "Authorization" in err["message"]
    assert_error(client.get("/api/generate"), 401)
    assert_error(client.get("/api/generate", headers={"Authorization": "Basic abc"}), 401)


def test_bad_key_is_401(client, user):
    for key in ("nope", user.key + "x", user.key[:-1], "bff_00000000_secret"):
        resp = client.get("/api/generate", headers={"Authorization": f"Bearer {key}"})
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_another_users_generation_is_404(app, client, user, other_user):
    gen_id = completed(app, client, user)
    h = other_user.headers
    assert_error(client.get(f"/api/generate/{gen_id}", headers=h), 404, "not_found")
    assert_error(client.post(f"/api/generate/{gen_id}/cancel", headers=h), 404)
    assert_error(client.post(f"/api/generate/{gen_id}/retry", headers=h), 404)
    assert_error(client.delete(f"/api/generate/{gen_id}", headers=h), 404)
    fb = client.post(f"/api/generate/{gen_id}/feedback", json={"feedbackType": "heart"}, headers=h)
    assert_error(fb, 404)
    assert client.get("/api/generate", headers=h).get_json()["items"] == []
    # ...and the owner's generation is untouched.
    assert client.get(f"/api/generate/{gen_id}", headers=user.headers).status_code == 200
    assert load(app, gen_id)["status"] == "completed"


# ------------------------------------------------------------- validation


def test_malformed_json_is_400(client, user):
    resp = client.post(
        PROMPT, data='{"prompt": ', content_type="application/json", headers=user.headers
    )
    assert_error(resp, 400, "malformed_json")
    resp = client.post(PROMPT, json=["a list"], headers=user.headers)
    assert_error(resp, 400)


def test_non_json_body_is_415(client, user):
    resp = client.post(PROMPT, data={"prompt": "red dress"}, headers=user.headers)
    assert_error(resp, 415, "unsupported_media_type")
    resp = client.post(PROMPT, data="prompt", content_type="text/plain", headers=user.headers)
    assert_error(resp, 415)


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 5001}, "prompt"),
        ({"prompt": "nul\x00byte"}, "prompt"),
        ({"prompt": "ok", "negativePrompt": "n" * 5001}, "negativePrompt"),
        ({"prompt": "ok", "settings": {"size": "2:1"}}, "settings.size"),
        ({"prompt": "ok", "settings": {"aspectRatio": "21:9"}}, "settings.aspectRatio"),
        ({"prompt": "ok", "settings": {"count": 0}}, "settings.count"),
        ({"prompt": "ok", "settings": {"count": 5}}, "settings.count"),
        ({"prompt": "ok", "settings": {"provider": "midjourney"}}, "settings.provider"),
        ({"prompt": "ok", "settings": {"strategy": "cheapest"}}, "settings.strategy"),
        ({"prompt": "ok", "settings": {"quality": "ultra"}}, "settings.quality"),
        ({"prompt": "ok", "settings": "square"}, "settings"),
        ({"prompt": "ok", "colour": "red"}, "colour"),  # unknown fields are refused, named
        ({"prompt": "ok", "settings": {"colour": "red"}}, "settings.colour"),
        ({"prompt": "ok", "settings": {"count": "2"}}, "settings.count"),  # no coercion
    ],
)
def test_invalid_prompt_submissions_are_422(client, user, body, field):
    err = assert_error(client.post(PROMPT, json=body, headers=user.headers), 422)
    assert err["code"] == "validation_error"
    assert any(d["field"].startswith(field) for d in err["details"]), err["details"]


def test_boundaries_that_are_accepted(client, user):
    for body in (
        {"prompt": "x" * 5000},
        {"prompt": "ok", "settings": {"count": 4, "size": "9:16"}},
        {"prompt": "ok", "settings": {"count": 1, "aspectRatio": "4:3", "provider": "local"}},
    ):
        assert client.post(PROMPT, json=body, headers=user.headers).status_code == 202, body


def test_requested_provider_without_its_key_is_422(client, user):
    for provider, var in (
        ("google-imagen", "REPLICATE_API_TOKEN"),
        ("openai-dalle3", "OPENAI_API_KEY"),
        ("openai-gpt-image", "OPENAI_API_KEY"),
    ):
        body = {"prompt": "red dress", "settings": {"provider": provider}}
        err = assert_error(client.post(PROMPT, json=body, headers=user.headers), 422)
        assert var in err["message"], err
    assert client.get("/api/generate", headers=user.headers).get_json()["items"] == []


def test_user_id_must_be_the_keys_user(client, user, other_user):
    ok = client.post(PROMPT, json={"prompt": "a", "userId": user.id}, headers=user.headers)
    assert ok.status_code == 202
    ok = client.post(PROMPT, json={"prompt": "a", "userId": str(user.id)}, headers=user.headers)
    assert ok.status_code == 202
    bad = client.post(PROMPT, json={"prompt": "a", "userId": other_user.id}, headers=user.headers)
    assert_error(bad, 403, "forbidden")


# ----------------------------------------------------------------- uploads


def test_upload_accepts_png_jpeg_webp(client, user):
    for fmt in ("PNG", "JPEG", "WEBP"):
        resp = submit_image(client, user.headers, png_bytes(fmt=fmt), filename="x.bin")
        assert resp.status_code == 202, (fmt, resp.get_json())
        assert resp.headers["Location"] == f"/api/generate/{resp.get_json()['id']}"


def test_a_phones_multi_picture_jpeg_is_a_jpeg(app, client, user):
    """Phone cameras save MPO: a JPEG with more pictures after the first."""
    buf = io.BytesIO()
    first, depth = Image.open(io.BytesIO(png_bytes())), Image.new("RGB", (64, 80), "gray")
    first.save(buf, "MPO", save_all=True, append_images=[depth])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    resp = submit_image(client, user.headers, buf.getvalue(), filename="IMG_0001.JPG")
    assert resp.status_code == 202, resp.get_json()
    run_all(app, resp.get_json()["id"])
    assert load(app, resp.get_json()["id"])["status"] == "completed"


def test_non_image_upload_is_415(client, user):
    for data, name in ((b"hello, not an image", "dress.png"), (png_bytes(fmt="GIF"), "a.gif")):
        assert_error(submit_image(client, user.headers, data, filename=name), 415)


def test_empty_and_missing_upload_are_422(client, user):
    assert_error(submit_image(client, user.headers, b""), 422)
    resp = client.post(
        "/api/generate/from-image",
        data={"prompt": "x"},
        headers=user.headers,
        content_type="multipart/form-data",
    )
    assert_error(resp, 422)


def test_oversized_upload_is_413(client, user):
    just_over = png_bytes() + b"\0" * (10 * 1024 * 1024)
    assert_error(submit_image(client, user.headers, just_over), 413, "payload_too_large")
    way_over = b"\0" * (11 * 1024 * 1024)
    assert_error(submit_image(client, user.headers, way_over), 413, "payload_too_large")


@pytest.mark.parametrize("path", ["/api/generate/from-prompt", "/api/batches", "/api/personas"])
def test_a_chunked_json_body_over_the_limit_is_413_not_cut_short(client, user, path):
    """Sent chunked (no Content-Length), a body is read up to the limit: what
    was read is no body at all (here, a valid JSON object and a pad)."""
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    body = b'{"prompt": "red dress", "name": "n"}' + b" " * limit
    chunked = {**user.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    resp = client.post(
        path,
        input_stream=io.BytesIO(body),
        headers=chunked,
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of chunked
    )
    assert resp.request.content_length is None
    assert_error(resp, 413, "payload_too_large")
    small = b'{"prompt": "red dress"}'
    resp = client.post(
        "/api/generate/from-prompt",
        input_stream=io.BytesIO(small),
        headers=chunked,
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 202, resp.json


@pytest.mark.parametrize(
    "path",
    [
        PROMPT,
        "/api/generate/from-image",
        "/api/batches",
        "/api/personas",
        "/api/personas/per_x",
        "/api/generate/gen_x/feedback",
        "/api/generate/gen_x/assets/1/refine",
    ],
)
def test_a_json_body_over_its_own_limit_is_413_unread(client, user, path):
    """A JSON body has a limit of its own, far below an upload's: one over it
    is refused by its Content-Length, before it is read or parsed (here a
    valid object and a pad, which it would otherwise accept)."""
    body = b'{"prompt": "red dress", "name": "n"}' + b" " * MAX_JSON_BYTES
    send = client.patch if path.startswith("/api/personas/") else client.post
    resp = send(path, data=body, headers={**user.headers, "Content-Type": "application/json"})
    error = assert_error(resp, 413, "payload_too_large")
    assert error["message"] == "request body too large: the limit is 4 MB", error
    small = send(
        path, data=body.strip(), headers={**user.headers, "Content-Type": "application/json"}
    )
    assert small.status_code != 413


def test_an_upload_may_be_larger_than_a_json_body(client, user):
    """The upload's form keeps its own limit (10 MB and the form)."""
    noise = Image.frombytes("RGB", (1300, 1300), os.urandom(1300 * 1300 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    assert MAX_JSON_BYTES < len(buf.getvalue()) < 10 * 2**20
    resp = submit_image(client, user.headers, buf.getvalue())
    assert resp.status_code == 202, resp.get_json()


def test_upload_settings_field_is_validated(client, user):
    bad = submit_image(client, user.headers, settings="{nope")
    assert_error(bad, 400)
    bad = submit_image(client, user.headers, settings='{"count": 9}')
    assert_error(bad, 422)
    for extra in ({"settings": '{"colour": "red"}'}, {"colour": "red"}, {"vltSpec": "{}"}):
        err = assert_error(submit_image(client, user.headers, **extra), 422)
        assert err["details"][0]["field"] in ("settings.colour", "colour", "vltSpec"), err
    ok = submit_image(client, user.headers, settings='{"count": 2, "size": "portrait"}')
    assert ok.status_code == 202
    gen = client.get(ok.headers["Location"], headers=user.headers).get_json()
    assert gen["settings"]["count"] == 2 and gen["settings"]["size"] == "portrait"


def test_vlt_spec_json(client, user):
    spec = {"records": [{"garmentType": "Dress", "colors": {"primary": "Black"}}]}
    resp = client.post("/api/generate/from-image", json={"vltSpec": spec}, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    for bad in ({"records": []}, {"records": [{"confidence": 3}]}, {"nope": 1}, "text"):
        resp = client.post("/api/generate/from-image", json={"vltSpec": bad}, headers=user.headers)
        assert_error(resp, 422, "validation_error")
    assert_error(client.post("/api/generate/from-image", json={}, headers=user.headers), 422)
    resp = client.post(
        "/api/generate/from-image", data="x", content_type="text/plain", headers=user.headers
    )
    assert_error(resp, 415)


# ------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_answer(client, user):
    h = {**user.headers, "Idempotency-Key": "k-1"}
    first = client.post(PROMPT, json={"prompt": "red dress"}, headers=h)
    again = client.post(PROMPT, json={"prompt": "red dress"}, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert len(client.get("/api/generate", headers=user.headers).get_json()["items"]) == 1

    conflict = client.post(PROMPT, json={"prompt": "blue dress"}, headers=h)
    assert_error(conflict, 409)
    other = client.post(PROMPT, json={"prompt": "red dress"}, headers=user.headers)
    assert other.get_json()["id"] != first.get_json()["id"]  # no key: a new generation


def test_idempotency_keys_are_per_user(client, user, other_user):
    body = {"prompt": "red dress"}
    a = client.post(PROMPT, json=body, headers={**user.headers, "Idempotency-Key": "same"})
    b = client.post(PROMPT, json=body, headers={**other_user.headers, "Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]
    got = client.get(b.headers["Location"], headers=other_user.headers)
    assert got.status_code == 200


def test_idempotency_for_uploads(client, user):
    h = {**user.headers, "Idempotency-Key": "up-1"}
    first = submit_image(client, h, png_bytes(color="navy"))
    again = submit_image(client, h, png_bytes(color="navy"))
    assert first.get_json()["id"] == again.get_json()["id"]
    assert_error(submit_image(client, h, png_bytes(color="gold")), 409)


# -------------------------------------------------------------- pagination


def test_pagination_walks_everything_newest_first(client, user, other_user):
    ids = [submit_prompt(client, user.headers, f"dress {i}") for i in range(7)]
    submit_prompt(client, other_user.headers)
    seen, cursor, pages = [], None, 0
    while True:
        q = "/api/generate?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(q, headers=user.headers)
        assert page.status_code == 200
        body = page.get_json()
        conforms(body, r.GenerationPage)
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    default = client.get("/api/generate", headers=user.headers).get_json()
    assert [i["id"] for i in default["items"]] == list(reversed(ids))
    assert default["nextCursor"] is None


# Python's int() also reads other scripts' digits, underscores and spaces.
@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "status=done",
        "limit=٣",
        "limit=1_0",
        "limit= 5",
    ],
)
def test_bad_list_parameters_are_422(client, user, query):
    assert_error(client.get(f"/api/generate?{query}", headers=user.headers), 422)


@pytest.mark.parametrize(
    "cursor", ["garbage", "W10", "WyJ4IiwgMV0", "1.gen_x", "1.gen_" + "0" * 25]
)
def test_bad_cursor_is_400(client, user, cursor):
    assert_error(client.get(f"/api/generate?cursor={cursor}", headers=user.headers), 400)


def test_any_cursor_the_document_allows_is_a_page(client, user):
    pattern = build_spec()["paths"]["/api/generate"]["get"]["parameters"][1]["schema"]["pattern"]
    gen_id = submit_prompt(client, user.headers)
    for cursor, items in (("1." + gen_id, []), ("9" * 17 + ".gen_" + "f" * 24, [gen_id])):
        assert re.fullmatch(pattern, cursor)
        page = client.get(f"/api/generate?cursor={cursor}", headers=user.headers).get_json()
        assert [i["id"] for i in page["items"]] == items


def test_status_filter(app, client, user):
    done = completed(app, client, user)
    canceled = submit_prompt(client, user.headers)
    client.post(f"/api/generate/{canceled}/cancel", headers=user.headers)
    pending = submit_prompt(client, user.headers)
    for status, expected in (
        ("completed", [done]),
        ("canceled", [canceled]),
        ("pending", [pending]),
    ):
        body = client.get(f"/api/generate?status={status}", headers=user.headers).get_json()
        assert [i["id"] for i in body["items"]] == expected
        assert all(i["status"] == status for i in body["items"])
    body = client.get("/api/generate?status=pending&limit=1", headers=user.headers).get_json()
    assert body["nextCursor"] is None


# ---------------------------------------------------------------- the shape


def test_accepted_answer(client, user):
    resp = client.post(PROMPT, json={"prompt": "red dress"}, headers=user.headers)
    assert resp.status_code == 202
    body = resp.get_json()
    conforms(body, r.AcceptedOut)
    assert body["id"].startswith("gen_") and body["status"] == "pending"
    assert body["links"] == {"self": f"/api/generate/{body['id']}"}
    assert resp.headers["Location"] == body["links"]["self"]
    # The answer's headers as sent (the 202 skips Werkzeug's last pass on them).
    assert resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["Content-Length"]) == len(resp.get_data())


def test_generation_shape_while_pending(client, user):
    gen_id = submit_prompt(client, user.headers, "red dress", size="landscape")
    resp = client.get(f"/api/generate/{gen_id}", headers=user.headers)
    assert resp.status_code == 200
    assert resp.headers["Retry-After"] == "1"
    gen = resp.get_json()
    conforms(gen, r.GenerationOut)
    assert gen["id"] == gen_id and gen["status"] == "pending" and gen["mode"] == "prompt"
    assert gen["createdAt"].endswith("Z") and gen["updatedAt"] and gen["completedAt"] is None
    assert gen["settings"] == {
        "provider": "auto",
        "strategy": "balanced",
        "quality": "standard",
        "size": "landscape",
        "count": 1,
        "enhance": "auto",
        "reference": "describe",
        "style": "natural",
        "safetyLevel": "block_only_high",
    }
    assert gen["prompt"]["original"] == "red dress" and gen["prompt"]["enhanced"] is None
    assert [s["name"] for s in gen["stages"]] == list(STAGES)
    for s in gen["stages"]:
        assert s["status"] == "pending" and s["attempts"] == 0 and s["startedAt"] is None
    assert gen["assets"] == [] and gen["cost"] == 0 and gen["error"] is None


def test_generation_shape_when_completed(app, client, user):
    gen_id = completed(app, client, user)
    resp = client.get(f"/api/generate/{gen_id}", headers=user.headers)
    assert "Retry-After" not in resp.headers
    gen = resp.get_json()
    conforms(gen, r.GenerationOut)
    assert gen["status"] == "completed" and gen["completedAt"].endswith("Z")
    assert gen["provider"] == "local" and gen["model"]
    assert gen["prompt"]["enhanced"] and gen["prompt"]["final"] and gen["prompt"]["negative"]
    [asset] = gen["assets"]
    assert asset["contentType"] == "image/png" and asset["fileSize"] > 0
    assert all(isinstance(s["durationMs"], int) for s in gen["stages"])
    assert isinstance(gen["cost"], float)


def test_failed_generation_names_the_cause(app, client, user, monkeypatch):
    gen_id = failed(app, client, user, monkeypatch)
    resp = client.get(f"/api/generate/{gen_id}", headers=user.headers)
    assert "Retry-After" not in resp.headers
    conforms(resp.get_json(), r.GenerationOut)
    assert resp.get_json()["error"] == {
        "stage": "generate",
        "message": "REPLICATE_API_TOKEN not configured",
        "code": "stage_failed",
    }


# ------------------------------------------------------- cancel and retry


def test_cancel(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    resp = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "canceled" and resp.get_json()["id"] == gen_id
    assert_error(client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers), 409)
    done = completed(app, client, user)
    assert_error(client.post(f"/api/generate/{done}/cancel", headers=user.headers), 409)
    assert load(app, done)["status"] == "completed"


def test_retry_only_failed(app, client, user, monkeypatch):
    pending = submit_prompt(client, user.headers)
    assert_error(client.post(f"/api/generate/{pending}/retry", headers=user.headers), 409)
    done = completed(app, client, user)
    assert_error(client.post(f"/api/generate/{done}/retry", headers=user.headers), 409)
    client.post(f"/api/generate/{pending}/cancel", headers=user.headers)
    assert_error(client.post(f"/api/generate/{pending}/retry", headers=user.headers), 409)

    gen_id = failed(app, client, user, monkeypatch)
    before = {s["name"]: s for s in load(app, gen_id)["stages"]}
    resp = client.post(f"/api/generate/{gen_id}/retry", headers=user.headers)
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"/api/generate/{gen_id}"
    gen = resp.get_json()
    assert gen["status"] == "pending" and gen["error"] is None
    stages = {s["name"]: s for s in gen["stages"]}
    assert stages["generate"]["status"] == "pending" and stages["generate"]["attempts"] == 0
    # Finished stages are kept, not re-run.
    assert stages["route"] == before["route"]
    run_all(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed" and len(gen["assets"]) == 1
    assert {s["name"]: s["attempts"] for s in gen["stages"]}["route"] == 1


def test_a_retry_counts_against_the_submission_rate(app_config, monkeypatch):
    """A retry runs the generation's paid work again: it counts as one
    submission (429 and Retry-After over the rate, nothing reset or queued);
    its Idempotency-Key replay is no new one."""
    app = create_app({**app_config, "BFF_SUBMIT_RATE_LIMIT": "3/60"})
    client, user = app.test_client(), make_user(app, "alice")
    first, second = (failed(app, client, user, monkeypatch) for _ in range(2))
    keyed = {**user.headers, "Idempotency-Key": "retry-1"}
    for _ in range(2):
        assert client.post(f"/api/generate/{first}/retry", headers=keyed).status_code == 202
    resp = client.post(f"/api/generate/{second}/retry", headers=user.headers)
    error = assert_error(resp, 429, "rate_limited")
    assert "retries" in error["message"], error
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert load(app, second)["status"] == "failed"
    more = client.post(PROMPT, json={"prompt": "red dress"}, headers=user.headers)
    assert_error(more, 429, "rate_limited")


# ------------------------------------------------------------------ delete


def test_delete_removes_rows_and_objects(app, client, user):
    gen_id = completed(app, client, user)
    asset_id = load(app, gen_id)["assets"][0]["id"]
    client.post(
        f"/api/generate/{gen_id}/feedback",
        json={"feedbackType": "heart", "assetId": asset_id},
        headers=user.headers,
    )
    folder = services(app).settings.media_root / "users" / str(user.id) / "generations" / gen_id
    assert any(folder.iterdir())

    resp = client.delete(f"/api/generate/{gen_id}", headers=user.headers)
    assert resp.status_code == 204 and resp.get_data() == b""
    assert "Content-Type" not in resp.headers  # no body, no media type
    assert not folder.exists()
    with services(app).db.session() as session:
        for model in (Generation, GenerationStage, GenerationAsset, GenerationFeedback):
            col = model.id if model is Generation else model.generation_id
            assert session.scalar(select(func.count()).where(col == gen_id)) == 0, model
    assert_error(client.get(f"/api/generate/{gen_id}", headers=user.headers), 404)
    assert_error(client.delete(f"/api/generate/{gen_id}", headers=user.headers), 404)


def test_delete_an_uploaded_pending_generation(app, client, user):
    resp = submit_image(client, user.headers)
    gen_id = resp.get_json()["id"]
    folder = services(app).settings.media_root / "users" / str(user.id) / "generations" / gen_id
    assert any(folder.iterdir())  # the upload
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    assert not folder.exists()


# ---------------------------------------------------------------- feedback


def test_feedback_types(app, client, user):
    gen_id = completed(app, client, user)
    asset_id = load(app, gen_id)["assets"][0]["id"]
    url = f"/api/generate/{gen_id}/feedback"
    for body in (
        {"feedbackType": "heart", "assetId": asset_id},
        {"feedbackType": "outlier"},
        {"feedbackType": "rating", "rating": 4},
        {"feedbackType": "comment", "comment": "lovely drape"},
    ):
        resp = client.post(url, json=body, headers=user.headers)
        assert resp.status_code == 201, resp.get_json()
        out = resp.get_json()
        conforms(out, r.FeedbackOut)
        assert out["generationId"] == gen_id and out["feedbackType"] == body["feedbackType"]
        assert out["id"] and out["createdAt"]
    with services(app).db.session() as session:
        n = session.scalar(select(func.count()).where(GenerationFeedback.generation_id == gen_id))
    assert n == 4


@pytest.mark.parametrize(
    "body",
    [
        {"feedbackType": "rating"},
        {"feedbackType": "rating", "rating": 0},
        {"feedbackType": "rating", "rating": 6},
        {"feedbackType": "comment"},
        {"feedbackType": "like"},
        {},
        {"feedbackType": "heart", "colour": "red"},
    ],
)
def test_invalid_feedback_is_422(app, client, user, body):
    gen_id = submit_prompt(client, user.headers)
    resp = client.post(f"/api/generate/{gen_id}/feedback", json=body, headers=user.headers)
    assert_error(resp, 422, "validation_error")


def test_no_feedback_on_a_generation_that_ended_without_images(app, client, user, monkeypatch):
    canceled = submit_prompt(client, user.headers)
    client.post(f"/api/generate/{canceled}/cancel", headers=user.headers)
    for gen_id in (canceled, failed(app, client, user, monkeypatch)):
        url = f"/api/generate/{gen_id}/feedback"
        resp = client.post(url, json={"feedbackType": "heart"}, headers=user.headers)
        assert "nothing to give feedback on" in assert_error(resp, 409, "conflict")["message"]
    with services(app).db.session() as session:
        assert session.scalar(select(func.count()).select_from(GenerationFeedback)) == 0


def test_feedback_asset_must_belong_to_the_generation(app, client, user):
    a = completed(app, client, user)
    b = submit_prompt(client, user.headers)
    asset_id = load(app, a)["assets"][0]["id"]
    resp = client.post(
        f"/api/generate/{b}/feedback",
        json={"feedbackType": "heart", "assetId": asset_id},
        headers=user.headers,
    )
    err = assert_error(resp, 422)
    assert err["details"][0]["field"] == "assetId"


# ------------------------------------------------------ never an HTML body


def test_unknown_route_and_wrong_method_answer_json(client, user):
    assert_error(client.get("/api/nothing-here", headers=user.headers), 404, "not_found")
    assert_error(client.get("/nothing-here"), 404)
    resp = client.put("/api/generate/gen_x", json={}, headers=user.headers)
    assert_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"] and "DELETE" in resp.headers["Allow"]
    assert_error(client.delete("/api/generate", headers=user.headers), 405)
    assert_error(client.get("/health/x"), 404)


def test_an_answer_that_breaks_its_model_is_a_500_not_a_422(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    with services(app).db.session() as session:
        session.get(Generation, gen_id).mode = "video"  # no such mode: our bug, not the client's
    assert_error(client.get(f"/api/generate/{gen_id}", headers=user.headers), 500, "internal_error")


@pytest.mark.parametrize(
    "path,allow",
    [
        (PROMPT, "OPTIONS, POST"),  # not the GET and DELETE of /api/generate/<id>
        ("/api/generate/gen_x", "DELETE, GET, HEAD, OPTIONS"),
        ("/api/personas", "GET, HEAD, OPTIONS, POST"),
        ("/health", "GET, HEAD, OPTIONS"),
    ],
)
def test_options_is_204_with_the_routes_methods(client, path, allow):
    resp = client.options(path)
    assert (resp.status_code, resp.headers["Allow"], resp.get_data()) == (204, allow, b"")
    assert "Content-Type" not in resp.headers
    assert_error(client.options("/api/nothing-here"), 404)
