"""Hostile input gets a clear 4xx in the JSON error envelope, never a 5xx or
HTML, and nothing is stored for a refused request."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import func, select

from app.domain.models import Generation
from tests.support.live import live_api
from tests.support.pipeline import png_bytes, services, submit_image


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_refused(app, resp, status: int, code: str | None = None) -> dict:
    """A JSON error with ``status``, and no generation row or stored object."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert err["message"] and set(err) == {"code", "message", "details"}
    assert code is None or err["code"] == code, err
    s = services(app)
    with s.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 0
    assert not any(p.is_file() for p in s.settings.media_root.rglob("*"))
    return err


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


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_422(app, client, user, fmt, keep):
    data = png_bytes((200, 240), fmt=fmt)
    resp = submit_image(client, user.headers, data[: int(len(data) * keep)])
    err = assert_refused(app, resp, 422, "invalid_image")
    assert err["details"][0]["field"] == "image"


# ------------------------------------------------- the HTTP server in front


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
