"""GET /api/generate/<id>/events on the embedded default (database polling):
ids, resume with Last-Event-ID, heartbeats, the final ``done``, auth and the
per-process stream limit."""

from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest

from app import create_app
from app.pipeline import STAGES
from app.platform.events import parse_event_id, stage_events
from tests.conftest import make_user
from tests.support.pipeline import run_all, submit_prompt


def parse_sse(text: str) -> list[dict]:
    """A minimal, independent SSE parser (the WHATWG rules we rely on)."""
    events = []
    for block in text.split("\n\n"):
        ev: dict = {"comment": []}
        for line in filter(None, block.split("\n")):
            if line.startswith(":"):
                ev["comment"].append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            ev[field] = value[1:] if value.startswith(" ") else value
        if "data" in ev:
            ev["data"] = json.loads(ev["data"])
        if len(ev) > 1 or ev["comment"]:
            events.append(ev)
    return events


def read_stream(client, user, gen_id, last_id=None) -> list[dict]:
    headers = dict(user.headers)
    if last_id:
        headers["Last-Event-ID"] = last_id
    resp = client.get(f"/api/generate/{gen_id}/events", headers=headers)
    assert resp.status_code == 200
    assert resp.mimetype == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    return parse_sse(resp.get_data(as_text=True))


def test_finished_generation_streams_every_transition_then_done(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    events = read_stream(client, user, gen_id)
    assert events[0].get("retry") == "2000"
    stages = [e for e in events if e.get("event") == "stage"]
    done = events[-1]
    final = {st["name"]: st["status"] for st in done["data"]["stages"]}
    assert final["analyze"] == "skipped" and final["generate"] == "completed"
    # Every stage started, then reached the status the database holds, in order.
    assert [(e["data"]["stage"], e["data"]["status"]) for e in stages] == [
        (name, status) for name in STAGES for status in ("running", final[name])
    ]
    ids = [parse_event_id(e["id"]) for e in stages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    finished = [e["data"] for e in stages if e["data"]["status"] != "running"]
    assert all(isinstance(d["durationMs"], int) for d in finished)
    assert done["event"] == "done" and done["id"] == "done"
    assert done["data"]["id"] == gen_id and done["data"]["status"] == "completed"
    assert done["data"]["assets"][0]["url"]


def test_last_event_id_resumes_exactly_after_what_the_client_saw(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    full = [e for e in read_stream(client, user, gen_id) if "id" in e]
    for cut in (0, 5, len(full) - 2):
        resumed = [e for e in read_stream(client, user, gen_id, full[cut]["id"]) if "id" in e]
        assert [e["id"] for e in resumed] == [e["id"] for e in full[cut + 1 :]]
    # A garbage id starts over rather than skipping anything.
    assert len([e for e in read_stream(client, user, gen_id, "bogus") if "id" in e]) == len(full)


def test_live_stream_follows_a_running_generation(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    worker = threading.Thread(target=run_all, args=(app, gen_id), kwargs={"pause": 0.05})
    resp = client.get(f"/api/generate/{gen_id}/events", headers=user.headers, buffered=False)
    worker.start()
    text = "".join(chunk.decode() for chunk in resp.response)
    worker.join()
    events = parse_sse(text)
    assert [e["event"] for e in events if "event" in e][-1] == "done"
    assert len([e for e in events if e.get("event") == "stage"]) == 2 * len(STAGES)


def test_stage_events_fan_out_to_every_stream_through_redis(app_config, monkeypatch):
    """With Redis, streams wake on the runner's PUBLISH (fakeredis gives its
    pub/sub semantics without a server), not on database polls: with a 60 s
    poll, two streams still follow the whole run at once."""
    from app.platform import events

    server = fakeredis.FakeServer()
    monkeypatch.setattr(events, "client", lambda _url: fakeredis.FakeRedis(server=server))
    app = create_app({**app_config, "REDIS_URL": "redis://redis.test/0", "BFF_SSE_POLL": "60"})
    client, user = app.test_client(), make_user(app, "fan")
    gen_id = submit_prompt(client, user.headers)
    streams = [
        client.get(f"/api/generate/{gen_id}/events", headers=user.headers, buffered=False)
        for _ in range(2)
    ]
    texts = [""] * 2
    readers = [
        threading.Thread(target=lambda i=i: texts.__setitem__(i, _read_all(streams[i])))
        for i in range(2)
    ]
    for r in readers:
        r.start()
    time.sleep(0.3)  # both subscribed and waiting
    started = time.monotonic()
    run_all(app, gen_id, pause=0.05)
    for r in readers:
        r.join(10)
    assert time.monotonic() - started < 10  # woken by messages, not by the 60 s poll
    for text in texts:
        got = parse_sse(text)
        assert got[-1]["event"] == "done"
        assert len([e for e in got if e.get("event") == "stage"]) == 2 * len(STAGES)


def _read_all(resp) -> str:
    return "".join(chunk.decode() for chunk in resp.response)


def test_heartbeat_comment_while_nothing_happens(app_config, tmp_path):
    app = create_app({**app_config, "BFF_SSE_HEARTBEAT": "0.2", "BFF_SSE_POLL": "0.05"})
    client, user = app.test_client(), make_user(app, "hb")
    gen_id = submit_prompt(client, user.headers)
    resp = client.get(f"/api/generate/{gen_id}/events", headers=user.headers, buffered=False)
    chunks = iter(resp.response)
    start = time.monotonic()
    seen = ""
    while ": keepalive" not in seen:
        seen += next(chunks).decode()
        assert time.monotonic() - start < 5
    assert "event:" not in seen  # nothing ran, so nothing but the heartbeat
    resp.close()


def test_events_need_the_owners_key(client, user, other_user):
    gen_id = submit_prompt(client, user.headers)
    assert client.get(f"/api/generate/{gen_id}/events").status_code == 401
    resp = client.get(f"/api/generate/{gen_id}/events", headers=other_user.headers)
    assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found"


def test_streams_beyond_the_limit_get_503_and_slots_come_back(app_config):
    app = create_app({**app_config, "BFF_SSE_MAX_STREAMS": "1", "BFF_SSE_POLL": "0.05"})
    client, user, other = app.test_client(), make_user(app, "lim"), make_user(app, "lim2")
    gen_id, theirs = submit_prompt(client, user.headers), submit_prompt(client, other.headers)
    first = client.get(f"/api/generate/{gen_id}/events", headers=user.headers, buffered=False)
    assert first.status_code == 200
    second = client.get(f"/api/generate/{theirs}/events", headers=other.headers, buffered=False)
    assert second.status_code == 503 and second.headers["Retry-After"]
    first.close()
    third = client.get(f"/api/generate/{theirs}/events", headers=other.headers, buffered=False)
    assert third.status_code == 200
    third.close()


def test_one_user_holds_at_most_a_third_of_the_streams(app_config):
    """One client's streams cannot take every slot from everyone else."""
    app = create_app({**app_config, "BFF_SSE_MAX_STREAMS": "6", "BFF_SSE_POLL": "0.05"})
    client, user, other = app.test_client(), make_user(app, "many"), make_user(app, "few")
    gen_id, theirs = submit_prompt(client, user.headers), submit_prompt(client, other.headers)

    def open_stream(who, gid):
        return client.get(f"/api/generate/{gid}/events", headers=who.headers, buffered=False)

    mine = [open_stream(user, gen_id) for _ in range(2)]
    assert [r.status_code for r in mine] == [200, 200]
    refused = open_stream(user, gen_id)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert "close one" in refused.json["error"]["message"] and refused.headers["Retry-After"]
    another = open_stream(other, theirs)  # the others' share is untouched
    assert another.status_code == 200
    mine[0].close()
    again = open_stream(user, gen_id)  # a stream closed gives its slot back
    assert again.status_code == 200
    for r in (mine[1], another, again):
        r.close()


@pytest.mark.parametrize(
    "stage,expected",
    [
        ({"name": "generate", "status": "pending", "attempts": 0, "durationMs": None}, []),
        (
            {"name": "generate", "status": "running", "attempts": 2, "durationMs": None},
            [((0, 2, 1), "running")],
        ),
        (
            {
                "name": "generate",
                "status": "pending",
                "attempts": 1,
                "durationMs": 12,
                "error": "attempt 1 failed, retrying in 1.0s: HTTP 503",
            },
            [((0, 1, 1), "running"), ((0, 1, 2), "pending")],
        ),
        (
            {"name": "analyze", "status": "skipped", "attempts": 0, "durationMs": 0},
            [((0, 0, 2), "skipped")],
        ),
    ],
)
def test_transitions_derived_from_a_stage_row(stage, expected):
    got = [(e.key, e.data["status"]) for e in stage_events([stage])]
    assert got == expected


def test_a_stream_resumed_after_a_retry_gets_the_new_run(app, client, user, monkeypatch):
    """The client saw the job fail at store; it was retried and finished: a
    stream resumed from the last id it saw gets store's new run, then done."""
    from tests.test_api_generations import failed

    gen_id = failed(app, client, user, monkeypatch, stage="store")
    seen = [e for e in read_stream(client, user, gen_id) if e.get("event") == "stage"]
    assert (seen[-1]["data"]["stage"], seen[-1]["data"]["status"]) == ("store", "failed")
    time.sleep(0.01)  # the retry starts in a later millisecond, as any real one does
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
    run_all(app, gen_id, ["store"])
    resumed = read_stream(client, user, gen_id, seen[-1]["id"])
    assert [
        (e["event"], e["data"].get("stage"), e["data"]["status"]) for e in resumed if "id" in e
    ] == [
        ("stage", "store", "running"),
        ("stage", "store", "completed"),
        ("done", None, "completed"),
    ]


@pytest.mark.parametrize("redis", [True, False])
def test_a_stopping_server_ends_its_open_streams(app_config, monkeypatch, redis):
    """Waiting on pub/sub (or a poll) for up to a minute, a stream held the
    server's stop for its graceful timeout, and was then cut."""
    from app.platform import events

    config = {**app_config, "BFF_SSE_POLL": "60", "BFF_SSE_HEARTBEAT": "60"}
    if redis:
        server = fakeredis.FakeServer()
        monkeypatch.setattr(events, "client", lambda _url: fakeredis.FakeRedis(server=server))
        config["REDIS_URL"] = "redis://redis.test/0"
    monkeypatch.setattr(events, "STOPPING", threading.Event(), raising=False)
    app = create_app(config)
    client, user = app.test_client(), make_user(app, "stop")
    gen_id = submit_prompt(client, user.headers)
    resp = client.get(f"/api/generate/{gen_id}/events", headers=user.headers, buffered=False)
    text = []
    reader = threading.Thread(target=lambda: text.append(_read_all(resp)), daemon=True)
    reader.start()
    time.sleep(0.3)  # subscribed and waiting
    assert reader.is_alive()
    events.STOPPING.set()
    reader.join(10)  # far above WAKE_SLICE: only a stream that never ends reaches it
    assert not reader.is_alive(), "the stream went on after the server began to stop"
    assert "event: done" not in text[0]  # ended, not finished: the client resumes elsewhere


def test_ending_streams_on_a_signal_keeps_what_it_did_before():
    """A process whose SIGTERM ended it still ends (streams ended first); one
    that ignored it still ignores it. In a process of its own: a handler set
    here would stay for the rest of the session."""
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\n"
        "from app.platform import events\n"
        "if sys.argv[1] == 'ignored':\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "events.end_streams_on(signal.SIGTERM)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.1)\n"  # a pending Python handler runs here at the latest
        "print('stopping' if events.STOPPING.is_set() else 'not stopping')\n"
    )
    run = [sys.executable, "-c", script]
    ended = subprocess.run([*run, "default"], capture_output=True, text=True, timeout=60)
    assert ended.returncode == -signal.SIGTERM, (ended.returncode, ended.stdout, ended.stderr)
    ignored = subprocess.run([*run, "ignored"], capture_output=True, text=True, timeout=60)
    assert (ignored.returncode, ignored.stdout) == (0, "stopping\n"), ignored.stderr
