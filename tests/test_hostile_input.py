"""Hostile input gets a clear 4xx in the JSON error envelope, never a 5xx or
HTML, and nothing is stored for a refused request."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select
from werkzeug.wrappers import Request

from app import create_app
from app.api.protocol import header_sizes
from app.domain.choices import SIZE_CHOICES
from app.domain.models import Generation
from tests.conftest import make_user
from tests.support.live import live_api
from tests.support.pipeline import png_bytes, run_all, services, submit_image, submit_prompt

FIELDS = ("prompt", "negativePrompt", "personaId", "settings", "vltSpec", "webhookUrl", "userId")
RECORD = ("garmentType", "silhouette", "colors", "confidence", "promptText")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def stored(app) -> tuple[int, int]:
    """Generation rows and stored objects."""
    s = services(app)
    with s.db.session() as session:
        rows = session.scalar(select(func.count()).select_from(Generation))
    return rows, sum(p.is_file() for p in s.settings.media_root.rglob("*"))


def assert_refused(app, resp, status: int | None = None, code: str | None = None) -> dict:
    """A 4xx JSON error (``status`` if given), and no generation row or object."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert status is None or resp.status_code == status, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert err["message"] and set(err) == {"code", "message", "details"}
    assert code is None or err["code"] == code, err
    assert stored(app) == (0, 0)
    return err


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb
    needs no real pixels to be refused."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "method,path,template,depth",
    [
        ("post", "/api/generate/from-prompt", '{"prompt": "x", "settings": %s}', 5000),
        ("post", "/api/generate/from-prompt", '{"prompt": "x", "settings": %s}', 33),
        ("post", "/api/generate/from-image", '{"vltSpec": {"records": %s}}', 1500),
        ("post", "/api/personas", '{"name": %s}', 100_000),
        ("patch", "/api/personas/per_x", '{"keywords": %s}', 1000),
    ],
)
def test_deeply_nested_json_is_400(app, client, user, method, path, template, depth):
    body = template % nested(depth)
    resp = getattr(client, method)(
        path, data=body, content_type="application/json", headers=user.headers
    )
    assert_refused(app, resp, 400, "malformed_json")


def test_deeply_nested_settings_field_is_400(app, client, user):
    resp = submit_image(client, user.headers, settings=nested(5000))
    assert_refused(app, resp, 400, "malformed_json")


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("post", "/api/personas", {"name": "n", "keywords": ["\udfff"]}),
        ("patch", "/api/personas/per_x", {"palette": ["\ud800"]}),
        ("post", "/api/generate/from-image", {"vltSpec": {"records": [{"silhouette": "\ud800"}]}}),
        ("post", "/api/generate/from-prompt", {"prompt": "x", "settings": {"\udc00": 1}}),
    ],
)
def test_a_lone_surrogate_is_400_not_a_stored_string_that_breaks_reads(
    app, client, user, method, path, body
):
    """JSON may escape a lone surrogate (json.dumps does); UTF-8 cannot hold
    one, so it is refused before anything stores it."""
    resp = getattr(client, method)(
        path, data=json.dumps(body), content_type="application/json", headers=user.headers
    )
    assert "surrogate" in assert_refused(app, resp, 400, "malformed_json")["message"]


def test_an_escaped_emoji_is_text(app, client, user):
    body = json.dumps({"name": "n", "keywords": ["\U0001f457 dress"]})  # as \ud83d\udc57
    resp = client.post(
        "/api/personas", data=body, content_type="application/json", headers=user.headers
    )
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["keywords"] == ["\U0001f457 dress"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_422(app, client, user, fmt, keep):
    data = png_bytes((200, 240), fmt=fmt)
    resp = submit_image(client, user.headers, data[: int(len(data) * keep)])
    err = assert_refused(app, resp, 422, "invalid_image")
    assert err["details"][0]["field"] == "image"


SPEC = {"garmentType": "dress"}


@pytest.mark.parametrize(
    "part",
    [
        {"silhouette": "x" * 201},  # each field a few words (a spec is stored, and prompted with)
        {"fabric": {"type": "silk", "notes": "n" * 201}},  # unknown fields are kept, if small
        {"colors": {"primary": "black", **{f"k{i}": i for i in range(21)}}},  # and few
        {"style": {"season": "winter", "mood": {"nested": True}}},  # and plain values
        {"construction": {"seams": "french\u0000seams"}},  # no NUL: PostgreSQL cannot store it
        {"promptText": "a\u0000b"},
    ],
)
def test_a_vlt_spec_with_oversized_or_unstorable_values_is_422(app, client, user, part):
    body = {"vltSpec": {"records": [{**SPEC, **part}]}}
    resp = client.post("/api/generate/from-image", json=body, headers=user.headers)
    err = assert_refused(app, resp, 422, "validation_error")
    assert err["details"][0]["field"].startswith("vltSpec.records.0.")


def test_a_vlt_spec_keeps_a_few_small_unknown_fields(client, user):
    part = {"fabric": {"type": "silk", "stretch": "two-way", "gsm": 90, "lined": None}}
    body = {"vltSpec": {"records": [{**SPEC, **part}]}}
    resp = client.post("/api/generate/from-image", json=body, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": i for i in range(21)}, {"note": "n" * 1001}, {"k" * 101: 1}, {"deep": {"a": 1}}],
)
def test_feedback_metadata_is_a_few_small_values(app, client, user, metadata):
    gen_id = submit_prompt(client, user.headers, provider="local")
    run_all(app, gen_id)
    url = f"/api/generate/{gen_id}/feedback"
    body = {"feedbackType": "heart", "metadata": metadata}
    resp = client.post(url, json=body, headers=user.headers)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["details"][0]["field"].startswith("metadata")
    ok = {"source": "web", "position": 2, "liked": True}
    resp = client.post(url, json={"feedbackType": "heart", "metadata": ok}, headers=user.headers)
    assert resp.status_code == 201, resp.get_json()


def progressive_jpeg(repeats: int) -> bytes:
    """A progressive JPEG, its last scan sent ``repeats`` times (each repeat
    is another pass over every block: minutes of CPU from a small file)."""
    buf = io.BytesIO()
    Image.new("RGB", (96, 128), "teal").save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * repeats + data[-2:]


def test_a_jpeg_with_its_scans_repeated_is_refused_before_decoding(app, client, user):
    err = assert_refused(app, submit_image(client, user.headers, progressive_jpeg(200)), 422,
                         "invalid_image")  # fmt: skip
    assert "scans" in err["message"] and err["details"][0]["field"] == "image"
    # An ordinary progressive JPEG (ten scans or so), and one with a few dozen, are welcome.
    assert submit_image(client, user.headers, progressive_jpeg(1)).status_code == 202
    assert submit_image(client, user.headers, progressive_jpeg(60)).status_code == 202


@pytest.mark.parametrize("w,h", [(7000, 7000), (20000, 20000)])  # our cap; Pillow's bomb limit
def test_too_many_pixels_is_422(app, client, user, w, h):
    resp = submit_image(client, user.headers, png_header(w, h))
    err = assert_refused(app, resp, 422, "image_too_large")
    assert "at most 40 M pixels are accepted" in err["message"], err  # the default limit


# ------------------------------------------------------ properties, at random

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SETTINGS_JSON = st.fixed_dictionaries(  # mostly valid values, some not
    {},
    optional={
        "provider": st.sampled_from(["auto", "local", "openai-dalle3", "midjourney"]),
        "size": st.sampled_from([*SIZE_CHOICES, "2:1"]),
        "aspectRatio": st.sampled_from(SIZE_CHOICES) | JSON,
        "count": st.integers(0, 5) | st.floats(0, 5),
        "quality": JSON,
    },
)
NEAR_VALID = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=30)},
    optional={
        "settings": SETTINGS_JSON,
        "negativePrompt": st.text(max_size=10) | JSON,
        "vltSpec": st.fixed_dictionaries(
            {"records": st.lists(st.dictionaries(st.sampled_from(RECORD), JSON), max_size=2)}
        ),
    },
)
BODIES = st.one_of(
    NEAR_VALID,
    JSON,
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON, max_size=5),
    st.integers(1, 3000).map(nested),
)


def image_bytes():
    """Random bytes, real images cut at a random offset, headers claiming huge sizes."""
    real = st.sampled_from(["PNG", "JPEG", "WEBP"]).map(lambda fmt: png_bytes((48, 40), fmt=fmt))
    cut = st.tuples(real, st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    huge = st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(
        lambda wh: png_header(*wh)
    )
    return st.one_of(st.binary(max_size=300), cut, huge, real)


def check_answer(app, resp, before: tuple[int, int], made: int = 1) -> None:
    """Never a 5xx; a 4xx is the JSON envelope and stores nothing; a 202
    stores ``made`` generations."""
    assert resp.status_code < 500, resp.get_data(as_text=True)[:300]
    if resp.status_code >= 400:
        assert resp.mimetype == "application/json"
        assert set(resp.get_json()["error"]) == {"code", "message", "details"}
        assert stored(app) == before
    else:
        assert resp.status_code == 202 and stored(app)[0] == before[0] + made


HYPOTHESIS = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def unlimited(app_config):
    app = create_app({**app_config, "BFF_SUBMIT_RATE_LIMIT": "0"})
    return app, app.test_client(), make_user(app, "fuzz").headers


@HYPOTHESIS
@given(path=st.sampled_from(["from-prompt", "from-image"]), body=BODIES, raw=st.binary(max_size=64))
def test_any_json_body_gets_an_answer_not_an_error(unlimited, path, body, raw):
    app, client, headers = unlimited
    for data in (body if isinstance(body, str) else json.dumps(body), raw):
        before = stored(app)
        resp = client.post(
            f"/api/generate/{path}", data=data, content_type="application/json", headers=headers
        )
        check_answer(app, resp, before)


BATCH_BODIES = st.one_of(
    st.fixed_dictionaries({"items": st.lists(NEAR_VALID | JSON, max_size=3)}),
    st.fixed_dictionaries(
        {},
        optional={
            "matrix": st.fixed_dictionaries(
                {"prompts": st.lists(st.text(max_size=12) | JSON, max_size=3)},
                optional={
                    "colorways": st.lists(st.text(max_size=8) | JSON, max_size=3) | JSON,
                    "sizes": st.lists(st.sampled_from([*SIZE_CHOICES, "2:1"]), max_size=2),
                    "providers": st.lists(st.sampled_from(["local", "midjourney"]), max_size=2),
                    "settings": SETTINGS_JSON | JSON,
                },
            ),
            "items": JSON,
            "webhookUrl": st.text(max_size=20) | JSON,
        },
    ),
    JSON,
)


@HYPOTHESIS
@given(body=BATCH_BODIES)
def test_any_batch_body_gets_an_answer_not_an_error(unlimited, body):
    """A refused batch stores nothing; an accepted one stores each of its generations."""
    app, client, headers = unlimited
    before = stored(app)
    resp = client.post("/api/batches", json=body, headers=headers)
    event(f"status {resp.status_code}")  # --hypothesis-show-statistics: how many were taken
    made = resp.get_json()["total"] if resp.status_code == 202 else 0
    check_answer(app, resp, before, made)


@HYPOTHESIS
@given(
    image=image_bytes(),
    form=st.dictionaries(
        st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8), st.text(max_size=30), max_size=3
    ),
    settings_json=st.none() | SETTINGS_JSON.map(json.dumps) | st.text(max_size=20),
)
def test_any_upload_gets_an_answer_not_an_error(unlimited, image, form, settings_json):
    app, client, headers = unlimited
    if settings_json is not None:
        form["settings"] = settings_json
    before = stored(app)
    resp = submit_image(client, headers, image, **form)
    check_answer(app, resp, before)
    if resp.status_code == 202:  # what the analyze stage will read decodes in full
        Image.open(io.BytesIO(image)).convert("RGB")


# ------------------------------------------------- the HTTP server in front


@pytest.mark.parametrize(
    "environ",
    [
        {"HTTP_HOST": "h", "HTTP_X_PAD": "p" * 10, "CONTENT_TYPE": "", "CONTENT_LENGTH": ""},
        {"HTTP_ACCEPT": "*/*", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "12"},
        # A client's "Content-Type" arrives unprefixed; a prefixed copy is no field.
        {"HTTP_CONTENT_TYPE": "text/plain", "HTTP_CONTENT_LENGTH": "3", "HTTP_X_A": ""},
    ],
    ids=["empty-content", "content", "prefixed-content"],
)
def test_the_header_limit_counts_the_fields_werkzeug_lists(environ):
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80"}
    listed = Request({**base, **environ}).headers.items()
    assert sorted(header_sizes({**base, **environ})) == sorted(
        len(name) + len(value) + 4 for name, value in listed
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with live_api(tmp_path_factory.mktemp("live")) as api:
        yield api


@pytest.mark.parametrize(
    "url,headers,status,layer",
    [
        ("/api/generate?cursor=" + "c" * 5_000, {}, 414, "flask"),
        ("/api/generate?cursor=" + "c" * 20_000, {}, 414, "gunicorn"),
        ("/api/generate", {f"X-Pad-{i}": "p" * 2_000 for i in range(10)}, 431, "flask"),
        ("/api/generate", {f"X-Pad-{i}": "p" for i in range(80)}, 431, "flask"),
        ("/api/generate", {"X-Pad": "p" * 40_000}, 431, "gunicorn"),
    ],
    ids=["url-5k", "url-20k", "headers-20k", "headers-80", "header-40k"],
)
def test_oversized_heads_answer_as_docs_operations_says(live, url, headers, status, layer):
    """Our limits answer JSON; past gunicorn's own (a request line over 8190
    bytes, one header field over 8190) gunicorn answers, in HTML, before the
    app: its limits stay bounded because its parser's cost grows with the
    square of the head's size (docs/operations.md, "Request limits")."""
    resp = requests.get(live.base_url + url, headers={**live.headers, **headers}, timeout=10)
    assert resp.status_code == status
    if layer == "flask":
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json()["error"]["code"] in ("uri_too_long", "headers_too_large")
    else:
        assert resp.headers["Content-Type"] == "text/html"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/generate//events"),
        ("POST", "/api/generate//from-prompt"),
        ("GET", "/static//x"),
    ],
)
def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(client, user, method, path):
    resp = client.open(path, method=method, headers=user.headers)
    assert (resp.status_code, resp.mimetype) == (404, "application/json"), resp.get_data()


@pytest.mark.parametrize(
    "path,body",
    [
        (
            "/api/generate/from-prompt",
            {"prompt": "x", "settings": {f"k{i}": 0 for i in range(1001)}},
        ),
        ("/api/batches", {"items": [{}] * 1001}),
        ("/api/personas", {"name": "n", "keywords": ["k"] * 5000}),
    ],
    ids=["object", "array", "persona-array"],
)
def test_an_array_or_object_of_thousands_of_entries_is_400(app, client, user, path, body):
    """Refused as it is read: each entry would be one more thing validated,
    and one more problem the 422 lists."""
    resp = client.post(path, json=body, headers=user.headers)
    assert "1000 entries" in assert_refused(app, resp, 400, "malformed_json")["message"]


def test_a_422_lists_its_first_problems_and_counts_them_all(app, client, user):
    """A body of many bad fields is not answered with a longer body."""
    settings = {f"k{i}": 0 for i in range(300)}
    resp = client.post(
        "/api/generate/from-prompt",
        json={"prompt": "x", "settings": settings},
        headers=user.headers,
    )
    err = assert_refused(app, resp, 422, "validation_error")
    assert len(err["details"]) == 50 and err["details"][0]["field"] == "settings.k0"
    assert "300 problems" in err["message"]


def test_an_integer_too_long_to_read_says_so(app, client, user):
    """Valid JSON that Python refuses to convert (more than 4,300 digits): a
    400 that names the number, not "not valid JSON"."""
    body = '{"prompt": "x", "settings": {"count": %s}}' % ("9" * 5000)
    resp = client.post(
        "/api/generate/from-prompt",
        data=body,
        content_type="application/json",
        headers=user.headers,
    )
    assert "number too long" in assert_refused(app, resp, 400, "malformed_json")["message"]


def test_a_multipart_body_without_a_boundary_is_400_not_a_missing_image(app, client, user):
    """No boundary: werkzeug reads no part, and the answer blamed the client
    for leaving out the image it sent."""
    resp = client.post(
        "/api/generate/from-image",
        data=b"--x\r\nContent-Disposition: form-data; name=image\r\n\r\nabc\r\n--x--\r\n",
        content_type="multipart/form-data",
        headers=user.headers,
    )
    assert "boundary" in assert_refused(app, resp, 400, "bad_request")["message"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "path", ["/api/generate/{}", "/api/generate/{}/events", "/api/batches/{}", "/api/personas/{}"]
)
def test_an_id_with_a_control_character_names_nothing(pg_app, pg_user, path, method):
    """404 as any id that names nothing, on PostgreSQL too (which refuses a NUL)."""
    client = pg_app.test_client()
    for bad in ("a%00b", "gen_%0a"):
        resp = client.open(path.format(bad), method=method, headers=pg_user.headers)
        assert resp.status_code == 404, resp.get_data()
        assert resp.mimetype == "application/json"


def test_a_batch_id_with_a_control_character_in_the_query_names_no_batch(pg_app, pg_user):
    """As in the path: a 404, not PostgreSQL's refusal of a NUL (a 400)."""
    client = pg_app.test_client()
    for bad in ("a%00b", "bat_%0a"):
        resp = client.get(f"/api/generate?batchId={bad}", headers=pg_user.headers)
        assert resp.status_code == 404, resp.get_data()
        assert resp.json["error"]["message"] == "batch not found"
