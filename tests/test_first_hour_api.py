"""What a new user met in their first hour with the API, each answered as
the contract says: a batch item's field named as the item's own, a matrix
sent to the wrong route pointed to the right one, feedback fields that do
not belong to the feedback type refused, the submit routes' other methods a
405, uploads refused with the reason and the limit, free work never refused
by the daily cap."""

from __future__ import annotations

import struct
from decimal import Decimal

import jsonschema_rs
import pytest
from sqlalchemy import func, select

from app import create_app
from app.api.errors import UNKNOWN
from app.api.openapi import build_spec
from app.domain import spend
from app.domain.models import Generation, GenerationFeedback, User
from tests.conftest import make_user
from tests.support.pipeline import load, png_bytes, run_all, services, submit_image, submit_prompt
from tests.test_api_generations import assert_error
from tests.test_hostile_input import png_header

BATCHES, PROMPT, IMAGE = "/api/batches", "/api/generate/from-prompt", "/api/generate/from-image"


def fields(error: dict) -> list[str]:
    return [d["field"] for d in error["details"]]


# ------------------------------------------------ batch items' field paths


def test_a_batch_items_errors_name_its_fields_not_the_union_branch(client, user):
    body = {"items": [{"prompt": 5}, {"prompt": "x", "foo": 1}, {"vltSpec": {"records": []}}]}
    error = assert_error(client.post(BATCHES, json=body, headers=user.headers), 422)
    assert fields(error) == ["items.0.prompt", "items.1.foo", "items.2.vltSpec.records"]
    body = {"items": [{"prompt": "x", "settings": {"provider": "midjourney"}}]}
    error = assert_error(client.post(BATCHES, json=body, headers=user.headers), 422)
    assert fields(error) == ["items.0.settings.provider"]


@pytest.mark.parametrize(
    "path,body",
    [
        (PROMPT, {"prompts": ["trench coat"], "colorways": ["navy"]}),
        (BATCHES, {"prompts": ["trench coat"], "colorways": ["navy"]}),  # not wrapped
    ],
)
def test_a_matrix_sent_where_it_does_not_go_says_where_it_does(client, user, path, body):
    error = assert_error(client.post(path, json=body, headers=user.headers), 422)
    assert "matrix" in error["message"] and "POST /api/batches" in error["message"]
    assert "prompts" in fields(error)


def test_a_plain_refusal_carries_no_matrix_hint(client, user):
    error = assert_error(client.post(PROMPT, json={"prompt": ""}, headers=user.headers), 422)
    assert error["message"] == "request validation failed"


def test_a_misspelt_setting_is_called_an_unknown_field(client, user):
    body = {"prompt": "linen shirt", "settings": {"sise": "portrait"}}
    error = assert_error(client.post(PROMPT, json=body, headers=user.headers), 422)
    assert error["details"] == [{"field": "settings.sise", "message": UNKNOWN}]
    assert "spelling" in UNKNOWN


# ------------------------------------------------ feedback fields by type


@pytest.mark.parametrize(
    "body,field",
    [
        ({"feedbackType": "heart", "rating": 2}, "rating"),
        ({"feedbackType": "outlier", "rating": 5}, "rating"),
        ({"feedbackType": "comment", "comment": "nice", "rating": 3}, "rating"),
        ({"feedbackType": "rating", "rating": 4, "comment": "nice drape"}, "comment"),
        ({"feedbackType": "heart", "comment": "love it"}, "comment"),
    ],
)
def test_a_field_of_another_feedback_type_is_422_and_records_nothing(client, user, body, field):
    gid = submit_prompt(client, user.headers)
    resp = client.post(f"/api/generate/{gid}/feedback", json=body, headers=user.headers)
    error = assert_error(resp, 422, "validation_error")
    assert fields(error) == [field], error
    [detail] = error["details"]  # our sentence, not pydantic's "Value error, ..."
    assert detail["message"].startswith(f"only with feedbackType '{field}'"), detail
    with services(client.application).db.session() as session:
        assert session.scalar(select(func.count()).select_from(GenerationFeedback)) == 0
    # ...and the document says so, so clients can know before they send.
    schema = {"$ref": "#/components/schemas/FeedbackIn", **build_spec()}
    assert not jsonschema_rs.Draft202012Validator(schema).is_valid(body)


@pytest.mark.parametrize(
    "body",
    [
        {"feedbackType": "heart", "rating": None, "comment": None},
        {"feedbackType": "outlier"},
        {"feedbackType": "rating", "rating": 3},
        {"feedbackType": "comment", "comment": "lovely drape"},
    ],
)
def test_each_type_with_its_own_fields_still_counts(client, user, body):
    gid = submit_prompt(client, user.headers)
    resp = client.post(f"/api/generate/{gid}/feedback", json=body, headers=user.headers)
    assert resp.status_code == 201, resp.get_json()


# ------------------------------------------------ submit routes' other methods


@pytest.mark.parametrize("path", [PROMPT, IMAGE])
@pytest.mark.parametrize("method", ["get", "delete", "put", "head"])
def test_another_method_on_a_submit_route_is_405_allow_post(client, user, path, method):
    resp = getattr(client, method)(path, headers=user.headers)
    assert resp.status_code == 405 and resp.headers["Allow"] == "OPTIONS, POST"
    if method != "head":
        assert_error(resp, 405, "method_not_allowed")
    assert client.get(path).status_code == 405  # a routing answer: no key needed


def test_a_malformed_generation_id_is_still_the_same_404(client, user):
    for path in ("/api/generate/nope", "/api/generate/from-prompts", "/api/generate/gen_x"):
        error = assert_error(client.get(path, headers=user.headers), 404, "not_found")
        assert error["message"] == "generation not found"
    error = assert_error(client.post("/api/generate/nope/cancel", headers=user.headers), 404)
    assert error["message"] == "generation not found"
    assert_error(client.get("/api/generate/nope"), 401)  # the key is checked first, as before


# ------------------------------------------------ uploads: the reason and the limit


def heic() -> bytes:
    """The first box of an iPhone photo: ``ftyp`` with the brand ``heic``."""
    ftyp = b"ftyp" + b"heic" + b"\0\0\0\0" + b"mif1heic"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\0\0\0\x22meta" + bytes(200)


@pytest.mark.parametrize("brand", [b"heic", b"heix", b"mif1", b"hevc"])
def test_a_heic_photo_is_refused_saying_what_to_send(client, user, brand):
    data = heic().replace(b"heic", brand, 1)
    error = assert_error(submit_image(client, user.headers, data, "IMG_0001.HEIC"), 415)
    assert error["message"].startswith("HEIC images are not accepted: send PNG, JPEG or WebP")
    assert fields(error) == ["image"]


def test_other_unreadable_bytes_keep_the_general_message(client, user):
    error = assert_error(submit_image(client, user.headers, b"not an image at all"), 415)
    assert error["message"] == "the upload is not a readable PNG, JPEG or WebP image"


@pytest.fixture
def small_limits(app_config):
    app = create_app(
        {**app_config, "BFF_MAX_IMAGE_PIXELS": "2500000", "BFF_MAX_UPLOAD_BYTES": "1048576"}
    )
    return app, app.test_client(), make_user(app, "alice")


@pytest.mark.parametrize("w,h", [(2000, 2000), (20000, 20000)])  # our cap; Pillow's bomb limit
def test_too_many_pixels_states_the_limit(small_limits, w, h):
    _, client, user = small_limits
    error = assert_error(submit_image(client, user.headers, png_header(w, h)), 422)
    assert error["code"] == "image_too_large"
    assert "at most 2.5 M pixels are accepted" in error["message"], error


def test_a_body_over_the_limit_states_the_limit(small_limits):
    _, client, user = small_limits
    resp = submit_image(client, user.headers, png_bytes() + bytes(2 * 1024 * 1024))
    error = assert_error(resp, 413, "payload_too_large")
    assert "the limit is 1.25 MB" in error["message"], error  # the image's 1 MB and the form
    assert "an image of up to 1 MB" in error["message"], error


# ------------------------------------------------ the daily cap and free work


def set_cap(app, user, usd: str, spent: str | None = None) -> None:
    with services(app).db.session() as session:
        session.get(User, user.id).daily_spend_cap = Decimal(usd)
    if spent is not None:
        with services(app).db.Session() as session:  # pay() commits, as generate's
            gen = session.scalars(select(Generation).where(Generation.user_id == user.id)).first()
            spend.pay(session, gen, Decimal(spent), "google-imagen", "generate")


@pytest.fixture
def paid_app(app_config):
    return create_app({**app_config, "REPLICATE_API_TOKEN": "r8_test"})  # Imagen: $0.06


def test_a_cap_of_zero_refuses_paid_work_but_not_free(paid_app, runner):
    client, alice = paid_app.test_client(), make_user(paid_app, "alice")
    runner.app = paid_app
    assert runner.invoke(args=["users", "cap", "alice", "0"]).exit_code == 0
    free = {"prompt": "red wool coat", "settings": {"provider": "local"}}
    assert client.post(PROMPT, json=free, headers=alice.headers).status_code == 202
    paid = {"prompt": "red wool coat", "settings": {"provider": "google-imagen"}}
    error = assert_error(client.post(PROMPT, json=paid, headers=alice.headers), 403)
    assert error["code"] == "budget_exceeded"
    batch = {"items": [free, free]}
    assert client.post(BATCHES, json=batch, headers=alice.headers).status_code == 202


def test_over_the_cap_free_work_is_still_accepted_and_runs(paid_app):
    client, alice = paid_app.test_client(), make_user(paid_app, "alice")
    submit_prompt(client, alice.headers, provider="google-imagen")
    set_cap(paid_app, alice, "0.10", spent="0.12")
    paid = {"prompt": "red wool coat", "settings": {"provider": "google-imagen"}}
    error = assert_error(client.post(PROMPT, json=paid, headers=alice.headers), 403)
    assert error["message"] == "today's spend $0.12 has reached your daily cap $0.10"
    free = submit_prompt(client, alice.headers, provider="local")
    run_all(paid_app, free)
    assert load(paid_app, free)["status"] == "completed"


def test_the_one_rule_the_stages_and_refine_use_lets_free_work_through(app, user):
    set_cap(app, user, "0")
    with services(app).db.session() as session:
        assert spend.refusal(session, user.id, 0.0) is None
        assert "has reached your daily cap $0.00" in (spend.refusal(session, user.id, 0.04) or "")
    assert spend.over_cap(0.0, 0.0, 0.0, "image") is None
    assert spend.over_cap(0.12, 0.10, 0.0, "image") is None
    assert spend.over_cap(0.12, 0.10, 0.06, "image") == (
        "today's spend $0.12 has reached your daily cap $0.10"
    )
    assert spend.over_cap(0.20, 0.24, 0.04, "image") is None  # exactly the cap, not a float over
    assert spend.over_cap(0.05, 0.10, 0.0625, "image") == (
        "this image may cost $0.0625: with today's $0.05 it would pass your daily cap $0.10"
    )
