"""End-to-end latency of one generation at a time (nothing else queued), and
of four submitted together (a designer trying a few prompts, a small batch):
the embedded default (`bff dev`: SQLite, filesystem broker, local disk) vs
the Procfile's web/worker/generator on PostgreSQL + Redis. Full-size local
renders (1024 px), one client submitting and polling every 20 ms."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests.support.embedded import embedded_system

from .harness import api_key, percentile, ratio, services, table
from .overhead import system

N = int(os.environ.get("BENCH_LATENCY_N", "20"))
TOGETHER, ROUNDS = 4, 5
FINAL = ("completed", "failed", "canceled")


def _submit(base: str, headers: dict[str, str], prompt: str) -> str:
    resp = requests.post(
        f"{base}/api/generate/from-prompt", headers=headers, json={"prompt": prompt}, timeout=10
    )
    assert resp.status_code == 202, resp.text
    return f"{base}/api/generate/{resp.json()['id']}"


def _all_completed(urls: list[str], headers: dict[str, str]) -> None:
    for url in urls:
        while (body := requests.get(url, headers=headers, timeout=10).json())[
            "status"
        ] not in FINAL:
            time.sleep(0.02)
        assert body["status"] == "completed", body


def _measure(base: str, headers: dict[str, str], n: int, together: int = 1) -> list[float]:
    """Seconds from the first of ``together`` submits until all completed, ``n`` times."""
    times = []
    for i in range(n + 2):  # two warm-ups
        t0 = time.perf_counter()
        urls = [_submit(base, headers, f"ivory silk blouse {i}.{j}") for j in range(together)]
        _all_completed(urls, headers)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def _both(base: str, headers: dict[str, str]) -> tuple[list[float], list[float]]:
    return _measure(base, headers, N), _measure(base, headers, ROUNDS, TOGETHER)


def _embedded() -> tuple[list[float], list[float]]:
    with (
        tempfile.TemporaryDirectory(prefix="bff-latency-") as folder,
        embedded_system(Path(folder)) as emb,
    ):
        return _both(emb.base_url, emb.headers)


def _services() -> tuple[list[float], list[float]]:
    with services(BFF_LOCAL_RENDER_SCALE="1.0") as env, system(env, "ours") as sysm:
        return _both(sysm.base, {"Authorization": f"Bearer {api_key(env, 'latency')}"})


def run() -> list[str]:
    (emb, emb4), (svc, svc4) = _embedded(), _services()
    rows = [
        [
            "p50 submit → completed",
            f"{statistics.median(emb) * 1000:.0f} ms",
            f"{statistics.median(svc) * 1000:.0f} ms",
            ratio(statistics.median(svc), statistics.median(emb)),
        ],
        [
            "p90",
            f"{percentile(emb, 90) * 1000:.0f} ms",
            f"{percentile(svc, 90) * 1000:.0f} ms",
            ratio(percentile(svc, 90), percentile(emb, 90)),
        ],
        [
            f"p50 {TOGETHER} submitted together → all completed",
            f"{statistics.median(emb4) * 1000:.0f} ms",
            f"{statistics.median(svc4) * 1000:.0f} ms",
            ratio(statistics.median(svc4), statistics.median(emb4)),
        ],
    ]
    return [
        table(
            f"One generation at a time ({N} each), and {TOGETHER} together ({ROUNDS} rounds)",
            ["", "embedded default", "Postgres + Redis", "services / embedded"],
            rows,
        )
    ]
