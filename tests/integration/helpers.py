"""Submitting over HTTP and waiting for a final state."""

from __future__ import annotations

import io
import time
from typing import Any

import requests
from PIL import Image

from app.pipeline import STAGES

FINAL = ("completed", "failed", "canceled")


def submit(base_url: str, headers: dict[str, str], prompt: str, **body: Any) -> str:
    resp = requests.post(
        f"{base_url}/api/generate/from-prompt",
        headers=headers,
        json={"prompt": prompt, **body},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def stage_of(gen: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in gen["stages"] if s["name"] == name)


def wait_final(
    base_url: str, headers: dict[str, str], gen_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(f"{base_url}/api/generate/{gen_id}", headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if body["status"] in FINAL:
            return body
        assert time.monotonic() < deadline, f"{gen_id} still {body['status']}: {body}"
        time.sleep(0.1)


def assert_completed_with_png(gen: dict[str, Any], mode: str) -> None:
    assert gen["status"] == "completed", gen
    stages = {s["name"]: s for s in gen["stages"]}
    assert list(stages) == list(STAGES)
    for s in stages.values():
        assert s["status"] in ("completed", "skipped"), s
        assert s["startedAt"] and s["finishedAt"] and s["durationMs"] is not None, s
        assert s["attempts"] >= 1
    assert stages["analyze"]["status"] == ("skipped" if mode == "prompt" else "completed")
    assert gen["assets"], gen
    for asset in gen["assets"]:
        resp = requests.get(asset["url"], timeout=10)
        assert resp.status_code == 200, asset["url"]
        img = Image.open(io.BytesIO(resp.content))
        assert img.format == "PNG"
        assert img.size == (asset["width"], asset["height"])
        assert len(resp.content) == asset["fileSize"]
        assert asset["contentType"] == "image/png"
