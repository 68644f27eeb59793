"""The real system on PostgreSQL + Redis + S3 (moto's server), run as the
Procfile's web, worker and generator processes."""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import text

from tests.integration.helpers import assert_completed_with_png, submit, wait_final
from tests.support.pipeline import png_bytes

pytestmark = pytest.mark.services


def test_prompt_generation_completes_on_postgres_redis_s3(stack):
    user = stack.user("integration-prompt")
    resp = requests.post(
        f"{stack.base_url}/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "emerald silk slip dress", "settings": {"size": "portrait"}},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == f"/api/generate/{resp.json()['id']}"
    gen = wait_final(stack.base_url, user.headers, resp.json()["id"])
    assert_completed_with_png(gen, "prompt")
    asset = gen["assets"][0]
    assert (asset["width"], asset["height"]) == (768, 1024)
    assert asset["url"].startswith(stack.env["R2_CDN_URL"] + f"/users/{user.id}/generations/")


def test_image_generation_completes_and_analyses_the_photo(stack):
    user = stack.user("integration-image")
    resp = requests.post(
        f"{stack.base_url}/api/generate/from-image",
        headers=user.headers,
        files={"image": ("dress.png", png_bytes((300, 420), "#800020"), "image/png")},
        data={"settings": json.dumps({"size": "1:1", "count": 2})},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    gen = wait_final(stack.base_url, user.headers, resp.json()["id"])
    assert_completed_with_png(gen, "image")
    assert len(gen["assets"]) == 2
    spec = next(s for s in gen["stages"] if s["name"] == "analyze")["output"]["spec"]
    assert spec["records"][0]["colors"]["primary"] in ("burgundy", "maroon", "red")


def test_each_stage_is_recorded_in_postgres(stack):
    user = stack.user("integration-rows")
    gen_id = submit(stack.base_url, user.headers, "navy wool coat")
    wait_final(stack.base_url, user.headers, gen_id)
    with stack.app.extensions["bff"].db.session() as session:
        rows = session.execute(
            text(
                "SELECT name, status, attempts, task_id FROM generation_stages"
                " WHERE generation_id = :g ORDER BY position"
            ),
            {"g": gen_id},
        ).all()
        summary = session.execute(
            text("SELECT asset_count, duration_seconds FROM generation_summary WHERE id = :g"),
            {"g": gen_id},
        ).one()
    assert [r.name for r in rows][0] == "analyze" and len(rows) == 7
    assert all(r.attempts == 1 for r in rows)
    # Each stage ran as its own task of the chain the web process sent.
    ran = [r.task_id for r in rows if r.task_id]
    assert len(set(ran)) == len(ran) >= 5
    assert all(r.task_id.startswith(f"{gen_id}.{r.name}.") for r in rows if r.task_id)
    assert summary.asset_count == 1 and summary.duration_seconds > 0
