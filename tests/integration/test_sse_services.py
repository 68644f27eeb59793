"""Live status, webhooks and /api/stats on the real system: gunicorn (gthread)
streaming SSE fed by Redis pub/sub, the Celery worker delivering webhooks,
PostgreSQL answering the stats queries."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import requests
from sqlalchemy import text
from standardwebhooks import Webhook

from tests.integration import helpers
from tests.integration.helpers import wait_final
from tests.support.embedded import BFF
from tests.test_events import parse_sse
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.services


def submit(stack, user, **extra) -> str:
    return helpers.submit(
        stack.base_url, user.headers, "camel cashmere coat", settings={"provider": "local"}, **extra
    )


def read_events(stack, user, gen_id, last_id=None, stop_after=None) -> list[dict]:
    headers = dict(user.headers)
    if last_id:
        headers["Last-Event-ID"] = last_id
    url = f"{stack.base_url}/api/generate/{gen_id}/events"
    with requests.get(url, headers=headers, stream=True, timeout=60) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        buf, events = "", []
        for chunk in resp.iter_content(chunk_size=None, decode_unicode=True):
            buf += chunk
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                events += parse_sse(block + "\n\n")
                stage_events = [e for e in events if e.get("event") == "stage"]
                if stop_after and len(stage_events) >= stop_after:
                    return events  # hang up mid-stream
        return events


def test_sse_streams_a_generation_live_and_resumes_exactly(stack):
    user = stack.user("sse-live")
    gen_id = submit(stack, user)
    first = read_events(stack, user, gen_id, stop_after=3)
    seen = [e for e in first if e.get("event") == "stage"]
    rest = read_events(stack, user, gen_id, last_id=seen[-1]["id"])
    assert rest[-1]["event"] == "done" and rest[-1]["data"]["status"] == "completed"
    resumed = [e for e in rest if e.get("event") == "stage"]
    # Together: every transition once, in order, whatever was live and what was replayed.
    everything = [e for e in read_events(stack, user, gen_id) if e.get("event") == "stage"]
    assert [e["id"] for e in seen + resumed] == [e["id"] for e in everything]
    assert len(everything) == 14
    # The workers' log lines name the generation and stage they were written for.
    assert f"[{gen_id} generate]" in stack.procs["generator"].output()
    assert {e["data"]["stage"] for e in everything if e["data"]["status"] == "completed"} >= {
        "enhance",
        "route",
        "optimize",
        "generate",
        "store",
    }


def test_webhook_delivered_by_the_worker_signed_and_retried(stack):
    user = stack.user("webhook-live")
    receiver = Receiver([500, 200])
    try:
        gen_id = submit(stack, user, webhookUrl=receiver.url)
        wait_final(stack.base_url, user.headers, gen_id)
        deadline = time.monotonic() + 30
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, receiver.received
            time.sleep(0.1)
        secret = requests.get(
            f"{stack.base_url}/api/webhooks/secret", headers=user.headers, timeout=5
        ).json()["secret"]
        for headers, body in receiver.received:
            payload = Webhook(secret).verify(body, headers)
            assert payload["status"] == "completed"
            assert payload["id"] == gen_id
        with stack.app.extensions["bff"].db.session() as session:
            deadline = time.monotonic() + 10
            while True:
                row = session.execute(
                    text(
                        "SELECT status, attempts, last_status_code FROM webhook_deliveries"
                        " WHERE generation_id = :g"
                    ),
                    {"g": gen_id},
                ).one()
                if row.status != "pending" or time.monotonic() > deadline:
                    break
                session.rollback()
                time.sleep(0.2)
        assert tuple(row) == ("delivered", 2, 200)
    finally:
        receiver.close()


def test_stats_on_postgres(stack):
    user = stack.user("stats-pg")
    ids = [submit(stack, user) for _ in range(2)]
    for gen_id in ids:
        wait_final(stack.base_url, user.headers, gen_id)
    canceled = submit(stack, user)
    requests.post(f"{stack.base_url}/api/generate/{canceled}/cancel", headers=user.headers)
    stats = requests.get(f"{stack.base_url}/api/stats", headers=user.headers, timeout=5)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    wait_final(stack.base_url, user.headers, canceled)  # canceled, or finished first
    assert body["counts"]["total"] == 3
    assert body["counts"]["completed"] + body["counts"]["canceled"] == 3
    assert body["counts"]["completed"] >= 2
    assert body["successRate"] == 1.0
    assert body["assets"] >= 2
    for stage in ("enhance", "route", "optimize", "generate", "store"):
        assert body["stageDurationsMs"][stage]["count"] >= 2
        assert body["stageDurationsMs"][stage]["avg"] >= 0
    assert body["costByDay"] == []  # the offline renderer is free: nothing was paid
    # Stats are the caller's own.
    other = requests.get(
        f"{stack.base_url}/api/stats", headers=stack.user("stats-other").headers, timeout=5
    ).json()
    assert other["counts"]["total"] == 0 and other["successRate"] is None


def test_metrics_on_postgres_and_redis(stack):
    from prometheus_client.parser import text_string_to_metric_families

    user = stack.user("metrics-pg")
    wait_final(stack.base_url, user.headers, submit(stack, user))
    resp = requests.get(f"{stack.base_url}/metrics", timeout=10)
    assert resp.status_code == 200
    fams = {f.name: f.samples for f in text_string_to_metric_families(resp.text)}
    queues = {s.labels["queue"]: s.value for s in fams["bff_queue_length"]}
    assert set(queues) == {"pipeline", "generation"} and all(v >= 0 for v in queues.values())
    with stack.app.extensions["bff"].db.session() as session:
        completed = session.execute(
            text(
                "SELECT COUNT(*) FROM generations WHERE status = 'completed' AND provider = 'local'"
            )
        ).scalar_one()
    got = [
        s.value
        for s in fams["bff_generations"]
        if s.labels == {"status": "completed", "provider": "local"}
    ]
    assert got == [completed] and completed >= 1
    durations = {s.labels["stage"] for s in fams["bff_stage_duration_seconds"]}
    assert {"enhance", "generate", "store"} <= durations


def bff(stack, user, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "BFF_API_URL": stack.base_url, "BFF_API_KEY": user.key}
    return subprocess.run([BFF, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_generate_wait_shows_live_stages_and_urls(stack):
    user = stack.user("cli-user")
    out = bff(stack, user, "generate", "olive trench coat", "--provider", "local", "--wait")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    gen_id = lines[0].removeprefix("submitted ")
    assert re.fullmatch(r"gen_[0-9a-f]+", gen_id), out.stdout
    # One line per transition, streamed: each stage starts, then finishes.
    assert re.search(r"… generate\s+running\n\s+✓ generate\s+completed \(\d+ ms\)", out.stdout)
    assert any("✓ store" in line for line in lines)
    assert lines[-1].startswith(stack.env["R2_CDN_URL"]) and lines[-1].endswith(".png")

    listed = bff(stack, user, "generations", "list")
    assert listed.returncode == 0 and gen_id in listed.stdout and "completed" in listed.stdout
    shown = bff(stack, user, "generations", "show", gen_id)
    assert shown.returncode == 0 and "olive trench coat" in shown.stdout
    assert lines[-1] in shown.stdout

    missing = bff(stack, user, "generations", "show", "gen_nope")
    assert missing.returncode != 0 and "404 not_found" in missing.stderr
    refused = bff(stack, user, "generate", "x", "--provider", "google-imagen", "--wait")
    assert refused.returncode != 0 and "422 provider_unavailable" in refused.stderr
