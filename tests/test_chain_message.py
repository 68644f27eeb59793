"""The chain sent as one prebuilt message (app.chain_message) must be what
Celery's canvas sends: compared here on a real Redis, message by message and
event by event, for every first stage. (That real workers run it end to end
is tests/integration, whose web process sends this way.)"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from celery import chain
from celery.canvas import _chain

from app import chain_message, create_app
from app import queue as queue_mod
from app.pipeline import STAGES
from tests.support.services import (
    free_port,
    redis_db_number,
    redis_ok,
    release_redis_db,
    unavailable,
)


@pytest.fixture
def redis_db():
    if not redis_ok():
        unavailable("Redis on 127.0.0.1:6379")
    import redis

    n = redis_db_number()
    client = redis.Redis("127.0.0.1", 6379, db=n)
    client.flushdb()
    try:
        yield n, client
    finally:
        client.flushdb()
        release_redis_db(n)


def _app(app_config, broker_url: str):
    return create_app({**app_config, "CELERY_BROKER_URL": broker_url})


def _canvas(celery_app, gen_id: str, names: list[str]) -> None:
    chain(*(celery_app.signature(n, args=(gen_id,), immutable=True) for n in names)).apply_async()


def _decode(raw: bytes) -> dict:
    env = json.loads(raw)
    env["body"] = json.loads(base64.b64decode(env["body"]))
    return env


def _normalise(env: dict, ids: list[str]) -> dict:
    """The message with what differs between two sends (task ids, delivery
    tag, the event's clock and time) replaced by placeholders."""
    text = json.dumps(env)
    for i, tid in enumerate(ids):
        text = text.replace(tid, f"<task {i}>")
    out = json.loads(text)
    out["properties"]["delivery_tag"] = "<tag>"
    body = out["body"]
    if isinstance(body, dict) and body.get("type") == "task-sent":
        body["clock"], body["timestamp"] = "<clock>", "<timestamp>"
    return out


def _task_ids(env: dict) -> list[str]:
    chained = env["body"][2]["chain"] or []
    return [env["headers"]["id"], *(s["options"]["task_id"] for s in reversed(chained))]


def _sends(client, db: int, send) -> tuple[list[tuple[str, dict]], list[dict]]:
    """The messages (queue, envelope) and the task-sent events ``send()`` makes."""
    pubsub = client.pubsub()
    pubsub.subscribe(f"/{db}.celeryev/task.sent")
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    send()
    messages = [
        (q, _decode(raw))
        for q in ("pipeline", "generation")
        for raw in reversed(client.lrange(q, 0, -1))
    ]
    client.delete("pipeline", "generation")
    events = []
    deadline = time.monotonic() + 2
    while len(events) < len(messages) and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.2)
        if m and m["type"] == "message":
            events.append(_decode(m["data"]))
    pubsub.close()
    return messages, events


@pytest.mark.parametrize("first", STAGES)
def test_the_template_sends_what_the_canvas_sends(app_config, redis_db, first):
    db, client = redis_db
    app = _app(app_config, f"redis://127.0.0.1:6379/{db}")
    celery_app = app.extensions["celery"]
    names = [f"pipeline.{n}" for n in STAGES[STAGES.index(first) :]]
    gen_id = f"gen_{uuid.uuid4().hex[:24]}"

    canvas, canvas_events = _sends(client, db, lambda: _canvas(celery_app, gen_id, names))
    sender = chain_message.sender(celery_app)
    ours, our_events = _sends(client, db, lambda: sender.send(gen_id, names))

    assert len(canvas) == len(ours) == 1 and len(canvas_events) == len(our_events) == 1
    (q1, m1), (q2, m2) = canvas[0], ours[0]
    assert q1 == q2 == ("generation" if first == "generate" else "pipeline")
    ids1, ids2 = _task_ids(m1), _task_ids(m2)
    assert len(ids2) == len(names) and len(set(ids2)) == len(names)
    assert all(uuid.UUID(t).version == 4 for t in ids2)
    assert _normalise(m2, ids2) == _normalise(m1, ids1)
    assert _normalise(our_events[0], ids2) == _normalise(canvas_events[0], ids1)
    assert our_events[0]["body"]["clock"] > canvas_events[0]["body"]["clock"]
    assert m2["headers"]["argsrepr"] == f"('{gen_id}',)"


def test_dispatch_uses_the_template_on_redis(app_config, redis_db, monkeypatch):
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    chain_message.sender(celery_app).template(tuple(f"pipeline.{n}" for n in STAGES))
    # Rendered (by the canvas of a private app); from now on the canvas is not used.
    monkeypatch.setattr(_chain, "apply_async", lambda *a, **k: pytest.fail("the canvas was used"))
    assert queue_mod.dispatch(celery_app, "gen_0123abcd")
    [raw] = client.lrange("pipeline", 0, -1)
    assert _decode(raw)["headers"]["task"] == "pipeline.analyze"


def test_without_redis_or_an_odd_id_the_canvas_sends(app_config, redis_db, monkeypatch):
    db, client = redis_db
    used: list[str] = []
    real = _chain.apply_async

    def canvas(self, *a, **k):
        used.append(self.tasks[0]["args"][0])
        return real(self, *a, **k)

    monkeypatch.setattr(_chain, "apply_async", canvas)
    memory = _app(app_config, "memory://").extensions["celery"]
    assert not chain_message.sender(memory).usable
    assert queue_mod.dispatch(memory, "gen_memory")
    redis_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    assert queue_mod.dispatch(redis_app, "gen_'quoted'")  # not a plain id: no template
    assert used == ["gen_memory", "gen_'quoted'"]
    assert client.llen("pipeline") == 1


def test_a_template_that_cannot_be_rendered_falls_back_to_the_canvas(
    app_config, redis_db, monkeypatch
):
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]

    def broken(*_a, **_k):
        raise ValueError("kombu changed")

    monkeypatch.setattr(chain_message, "render", broken)
    assert queue_mod.dispatch(celery_app, "gen_fallback")
    [raw] = client.lrange("pipeline", 0, -1)
    assert _decode(raw)["headers"]["argsrepr"] == "('gen_fallback',)"


def test_templates_are_rendered_again_after_a_fork(app_config, redis_db, monkeypatch):
    db, _ = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    names = ("pipeline.store",)
    first = sender.template(names)
    assert sender.template(names) is first
    monkeypatch.setattr(chain_message.os, "getpid", lambda: 1)  # as in a forked child
    again = sender.template(names)
    assert '"origin": "gen1@' in again.envelope and '"pid": 1,' in again.event_body


def test_an_unreachable_broker_is_reported_not_raised(app_config):
    celery_app = _app(app_config, f"redis://127.0.0.1:{free_port()}/0").extensions["celery"]
    started = time.monotonic()
    assert queue_mod.dispatch(celery_app, "gen_nobroker") is False
    assert time.monotonic() - started < 3  # the publish retry policy: 0.2 s + 0.5 s


def test_task_ids_are_random_version_4_uuids():
    ids = chain_message.uuid4s(500)
    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_a_dropped_connection_is_retried_by_the_publish_policy(app_config, redis_db, monkeypatch):
    import redis

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    real, calls = sender._connection, []

    def flaky(idle=True):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset")
        return real(idle)

    monkeypatch.setattr(sender, "_connection", flaky)
    monkeypatch.setattr(chain_message.time, "sleep", lambda _s: None)
    assert queue_mod.dispatch(celery_app, "gen_retried")
    assert len(calls) == 2 and client.llen("pipeline") == 1


def test_a_connection_redis_closed_is_replaced_and_the_send_retried(
    app_config, redis_db, monkeypatch
):
    """The sender keeps its connections between sends: one the server has
    closed meanwhile (a restart, its idle timeout, ``CLIENT KILL``) is
    replaced at once by the next send, without the publish policy's pause;
    nothing is lost."""
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    assert queue_mod.dispatch(celery_app, "gen_one")
    [kept] = sender._idle
    client.client_kill(f"127.0.0.1:{kept._sock.getsockname()[1]}")
    pauses: list[float] = []
    monkeypatch.setattr(chain_message.time, "sleep", pauses.append)
    assert queue_mod.dispatch(celery_app, "gen_two")
    assert pauses == []
    assert client.llen("pipeline") == 2
    [again] = sender._idle
    assert again is not kept
    assert queue_mod.dispatch_many(celery_app, ["gen_3", "gen_4"]) == []
    assert client.llen("pipeline") == 4 and sender._idle == [again]


def test_a_connection_lost_after_the_push_does_not_send_again(app_config, redis_db, caplog):
    """The push's reply read, the events' not: the chains are queued, so the
    send succeeds (a lost ``task-sent`` event only tells Flower less)."""
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    sender._timeout = 0.3  # the socket's: how long it waits for the replies that never come
    sender._write(chain_message.resp.command(b"LPUSH", b"pipeline", b"x"), 3)  # 1 reply of 3
    assert client.llen("pipeline") == 1 and sender._idle == []
    assert "task-sent events may be lost" in caplog.text


def _as_for(message: dict, task_ids: list[str], gen_id: str, other: str) -> dict:
    """``message`` normalised, and as if it were for generation ``other``."""
    return json.loads(json.dumps(_normalise(message, task_ids)).replace(gen_id, other))


def test_many_chains_in_one_send_are_the_messages_of_one_send_each(app_config, redis_db):
    """``send_many`` (a batch of submits): one LPUSH of all the messages and
    an event each, in one round trip; each message is what ``send`` makes
    for its generation, with ids of its own, in order."""
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    names = [f"pipeline.{n}" for n in STAGES]
    gen_ids = [f"gen_{uuid.uuid4().hex[:24]}" for _ in range(3)]
    one, one_events = _sends(client, db, lambda: sender.send(gen_ids[0], names))
    many, many_events = _sends(client, db, lambda: sender.send_many(gen_ids, names))

    assert [m["headers"]["argsrepr"] for _, m in many] == [f"('{g}',)" for g in gen_ids]
    ids = [_task_ids(m) for _, m in many]
    assert len({t for i in ids for t in i}) == 3 * len(names)
    assert len({m["properties"]["delivery_tag"] for _, m in many}) == 3
    reference = _normalise(one[0][1], _task_ids(one[0][1]))
    event = _normalise(one_events[0], _task_ids(one[0][1]))
    assert len(many_events) == 3
    for (queue, message), ev, task_ids, gen_id in zip(many, many_events, ids, gen_ids, strict=True):
        assert queue == "pipeline"
        assert _as_for(message, task_ids, gen_id, gen_ids[0]) == reference
        assert _as_for(ev, task_ids, gen_id, gen_ids[0]) == event
    clocks = [e["body"]["clock"] for e in many_events]
    assert clocks == sorted(clocks) and len(set(clocks)) == 3


def test_a_batch_redis_refuses_is_reported_and_queues_nothing(app_config, redis_db, monkeypatch):
    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    client.set("pipeline", "not a list")  # the LPUSH gets an error reply (WRONGTYPE)
    assert queue_mod.dispatch_many(celery_app, ["gen_a", "gen_b"]) == ["gen_a", "gen_b"]
    assert client.get("pipeline") == b"not a list"
    client.delete("pipeline")
    assert queue_mod.dispatch_many(celery_app, ["gen_a", "gen_b"]) == []
    assert [_decode(m)["headers"]["argsrepr"] for m in client.lrange("pipeline", 0, -1)] == [
        "('gen_b',)",
        "('gen_a',)",  # LPUSH: the first is taken first from the other end
    ]
    # A sender that cannot template them: one dispatch each, as for one.
    monkeypatch.setattr(chain_message.ChainSender, "send_many", lambda *a: False)
    sent: list[str] = []
    monkeypatch.setattr(queue_mod, "dispatch", lambda _app, gid: sent.append(gid) or gid != "x")
    assert queue_mod.dispatch_many(celery_app, ["gen_c", "x"]) == ["x"]
    assert sent == ["gen_c", "x"]


def test_a_finished_stage_sends_the_rest_of_its_chain_prebuilt(app_config, redis_db):
    """``workers.tasks._continue``: after a stage, the rest of the chain goes
    as the prebuilt message, the one Celery's continuation would send, and
    Celery's continuation is cleared (it would send it twice)."""
    from types import SimpleNamespace

    from workers import tasks

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    names = [f"pipeline.{n}" for n in STAGES]
    gen_id = f"gen_{uuid.uuid4().hex[:24]}"
    [(_, first)], _ = _sends(client, db, lambda: _canvas(celery_app, gen_id, names))
    rest = first["body"][2]["chain"]  # what a worker running `analyze` has in request.chain
    task = SimpleNamespace(app=celery_app, request=SimpleNamespace(chain=list(rest)))

    canvas, canvas_events = _sends(client, db, lambda: _canvas(celery_app, gen_id, names[1:]))
    ours, our_events = _sends(client, db, lambda: tasks._continue(task, gen_id, "analyze"))
    assert task.request.chain is None
    assert len(ours) == len(our_events) == 1
    (q1, m1), (q2, m2) = canvas[0], ours[0]
    assert q1 == q2 == "pipeline" and m2["headers"]["task"] == "pipeline.enhance"
    assert _normalise(m2, _task_ids(m2)) == _normalise(m1, _task_ids(m1))
    assert _normalise(our_events[0], _task_ids(m2)) == _normalise(canvas_events[0], _task_ids(m1))

    # The last stage before `generate` sends to the generation queue.
    task.request.chain = [s for s in rest if s["task"] in ("pipeline.generate", "pipeline.store")]
    ours, _ = _sends(client, db, lambda: tasks._continue(task, gen_id, "optimize"))
    assert [(q, m["headers"]["task"]) for q, m in ours] == [("generation", "pipeline.generate")]


def test_a_chain_that_is_not_the_rest_of_the_stages_is_left_to_celery(
    app_config, redis_db, monkeypatch
):
    from types import SimpleNamespace

    from workers import tasks

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    odd = [{"task": "pipeline.store", "args": ["gen_x"]}, {"task": "pipeline.persona"}]
    task = SimpleNamespace(app=celery_app, request=SimpleNamespace(chain=list(odd)))
    sent, _ = _sends(client, db, lambda: tasks._continue(task, "gen_x", "enhance"))
    assert sent == [] and task.request.chain == odd

    # A broker that refuses the prebuilt message: Celery's continuation sends it.
    names = [f"pipeline.{n}" for n in STAGES]
    rest = [{"task": n} for n in reversed(names[2:])]
    task.request.chain = list(rest)
    sender = chain_message.sender(celery_app)
    monkeypatch.setattr(sender, "send", lambda *a: (_ for _ in ()).throw(ConnectionError("down")))
    tasks._continue(task, "gen_x", "enhance")
    assert task.request.chain == rest
    monkeypatch.setattr(sender, "send", lambda *a: False)  # no template: the canvas
    tasks._continue(task, "gen_x", "enhance")
    assert task.request.chain == rest


def test_a_finished_stage_jumps_the_queue_of_new_generations(app_config, redis_db):
    """Depth first: a started generation's next stage is taken before the new
    generations waiting in the queue, which keep their order."""
    from types import SimpleNamespace

    from workers import tasks

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    names = [f"pipeline.{n}" for n in STAGES]
    new = [f"gen_new{i}" for i in range(3)]
    sender.send_many(new, names)  # waiting: three new generations
    rest = [{"task": n} for n in reversed(names[2:])]
    task = SimpleNamespace(app=celery_app, request=SimpleNamespace(chain=rest))
    tasks._continue(task, "gen_started", "enhance")
    # kombu's consumer pops the right end (BRPOP), as rpop does here
    taken = [_decode(client.rpop("pipeline")) for _ in range(4)]
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in taken] == [
        ("pipeline.persona", "('gen_started',)"),
        *(("pipeline.analyze", f"('{g}',)") for g in new),
    ]
    # Several sent to the front at once are taken in the order given.
    sender.send_many(["gen_a", "gen_b"], names[3:], front=True)
    assert [_decode(client.rpop("pipeline"))["headers"]["argsrepr"] for _ in range(2)] == [
        "('gen_a',)",
        "('gen_b',)",
    ]


def test_a_template_rendered_inside_a_running_task_names_no_other_task(app_config, redis_db):
    """A worker renders the templates of its continuations while a stage task
    runs: Celery would make that task every later message's parent and root."""
    from types import SimpleNamespace

    from celery._state import _task_stack

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    names = [f"pipeline.{n}" for n in STAGES[2:]]
    gen_id = f"gen_{uuid.uuid4().hex[:24]}"
    canvas, _ = _sends(client, db, lambda: _canvas(celery_app, gen_id, names))
    running = SimpleNamespace(
        request=SimpleNamespace(
            id="RUNNING-TASK-ID", root_id="ITS-ROOT-ID", called_directly=False, priority=None
        )
    )
    _task_stack.push(running)
    try:
        sender = chain_message.sender(celery_app)
        ours, events = _sends(client, db, lambda: sender.send(gen_id, names))
    finally:
        _task_stack.pop()
    raw = json.dumps(ours) + json.dumps(events)
    assert "RUNNING-TASK-ID" not in raw and "ITS-ROOT-ID" not in raw
    (_, m1), (_, m2) = canvas[0], ours[0]
    assert _normalise(m2, _task_ids(m2)) == _normalise(m1, _task_ids(m1))
    assert m2["headers"]["parent_id"] is None and m2["headers"]["root_id"] == _task_ids(m2)[0]


def test_generate_keeps_its_queue_first_in_first_out(app_config, redis_db):
    """Only ``pipeline`` takes a continuation first: every job waiting in
    ``generation`` has started, and the oldest goes first."""
    from types import SimpleNamespace

    from workers import tasks

    db, client = redis_db
    celery_app = _app(app_config, f"redis://127.0.0.1:6379/{db}").extensions["celery"]
    sender = chain_message.sender(celery_app)
    names = [f"pipeline.{n}" for n in STAGES]
    sender.send("gen_older", names[5:])  # already waiting at generate
    rest = [{"task": n} for n in reversed(names[5:])]
    task = SimpleNamespace(app=celery_app, request=SimpleNamespace(chain=rest))
    tasks._continue(task, "gen_newer", "optimize")
    assert task.request.chain is None
    taken = [_decode(client.rpop("generation"))["headers"]["argsrepr"] for _ in range(2)]
    assert taken == ["('gen_older',)", "('gen_newer',)"]
