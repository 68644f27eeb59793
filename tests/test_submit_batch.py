"""Group commit of submits on PostgreSQL (app.submit_batch): submits that
arrive together share one insert statement, one commit and one Redis write,
and each request still gets exactly the answer it would get alone.

To make a batch on purpose, an opening submit's batch is held in flight
until the requests under test have all queued behind it: they then form
the next batch, together."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis
from sqlalchemy.exc import OperationalError

from app import chain_message, create_app, submit_batch
from app.models import Generation, Persona, User, utcnow
from app.submissions import SubmitRow, insert_many, insert_submitted
from tests.conftest import make_user
from tests.support.pipeline import services


@pytest.fixture(scope="module")
def pg_env(service_env, tmp_path_factory) -> dict[str, str]:
    return {
        **service_env,
        "STORAGE_BACKEND": "local",
        "BFF_MEDIA_ROOT": str(tmp_path_factory.mktemp("media")),
        "BFF_SUBMIT_RATE_LIMIT": "0",
    }


@pytest.fixture
def make_app(pg_env, redis_url):
    """Apps on PostgreSQL whose broker is a real, empty Redis db (so the
    chains go through ``ChainSender``)."""
    apps = []

    def make(**overrides: str):
        app = create_app({**pg_env, "CELERY_BROKER_URL": redis_url, **overrides})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["bff"].db.engine.dispose()


@pytest.fixture
def queue(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def _user(app):
    return make_user(app, f"batch-{uuid.uuid4().hex[:8]}")  # the database is shared


def _post(app, user, body: dict, key: str | None = None):
    headers = dict(user.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return app.test_client().post("/api/generate/from-prompt", json=body, headers=headers)


def _in_one_batch(app, monkeypatch, sends: list[Callable[[], object]]) -> tuple[list, list[int]]:
    """Run ``sends`` (requests to ``app``) at once, as ONE batch; returns
    their responses in order and the row count of every insert statement
    (the opening submit's first)."""
    combiner = services(app).submits._combiner
    real, sizes = submit_batch.insert_many, []

    def held(db, rows, rate_limit):
        if not sizes:  # the opener's batch: in flight until everyone queued
            deadline = time.monotonic() + 10
            while len(combiner._here().queue) < len(sends):
                assert time.monotonic() < deadline, "the requests never queued"
                time.sleep(0.002)
        sizes.append(len(rows))
        return real(db, rows, rate_limit)

    opener_user = _user(app)
    _post(app, opener_user, {"prompt": "x", "settings": {"count": 5}})  # 422: verifies the key
    monkeypatch.setattr(submit_batch, "insert_many", held)
    out: list = [None] * len(sends)

    def run(i: int) -> None:
        out[i] = sends[i]()

    opener = threading.Thread(target=lambda: _post(app, opener_user, {"prompt": "opener"}))
    opener.start()
    while not sizes and not combiner._here().busy:
        time.sleep(0.001)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sends))]
    for t in threads:
        t.start()
    for t in [opener, *threads]:
        t.join(20)
    assert not any(t.is_alive() for t in [opener, *threads]), "a request was left waiting"
    return out, sizes


def _rows(app, user_id: int) -> list[Generation]:
    with services(app).db.session() as session:
        rows = session.query(Generation).filter_by(user_id=user_id).all()
        for gen in rows:
            gen.stages  # noqa: B018 - loaded for the caller
        return rows


def _queued_ids(queue: redis.Redis) -> list[str]:
    ids = []
    for raw in reversed(queue.lrange("pipeline", 0, -1)):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(body[0][0])
    return ids


def test_concurrent_submits_share_one_statement_and_one_redis_write(make_app, queue, monkeypatch):
    app = make_app()
    users = [_user(app) for _ in range(3)]
    writes: list[int] = []
    real_write = chain_message.ChainSender._write
    monkeypatch.setattr(
        chain_message.ChainSender,
        "_write",
        lambda self, data, replies: writes.append(replies) or real_write(self, data, replies),
    )
    sends = [
        (lambda i=i: _post(app, users[i % 3], {"prompt": f"silk dress {i}"})) for i in range(12)
    ]
    for user in users:  # their keys verified first: the requests then need no transaction
        _post(app, user, {"prompt": "first"})
    queue.delete("pipeline")
    writes.clear()
    answers, sizes = _in_one_batch(app, monkeypatch, sends)

    assert sizes == [1, 12]
    assert [r.status_code for r in answers] == [202] * 12, [r.get_json() for r in answers]
    ids = [r.get_json()["id"] for r in answers]
    assert len(set(ids)) == 12
    for r in answers:  # byte for byte what jsonify makes of the 202's dict
        gid = r.get_json()["id"]
        link = f"/api/generate/{gid}"
        with app.app_context():
            jsonified = app.json.response({"id": gid, "status": "pending", "links": {"self": link}})
        assert r.data == jsonified.data and r.content_type == jsonified.content_type
        assert r.location == link
    # One LPUSH for the batch and one task-sent event per chain: one write.
    assert writes == [2, 13]
    assert set(_queued_ids(queue)) >= set(ids) and len(_queued_ids(queue)) == 13
    stored = {g.id: g for u in users for g in _rows(app, u.id)}
    for i, gid in enumerate(ids):
        gen = stored[gid]
        assert gen.prompt == f"silk dress {i}" and gen.user_id == users[i % 3].id
        assert gen.dispatched_at is not None and gen.status == "pending"
        assert gen.stages == []  # written by the first stage's claim


def test_a_batch_with_refused_rows_answers_each_as_alone(make_app, queue, monkeypatch):
    app = make_app()
    ok, capped, persona_user, keyed = (_user(app) for _ in range(4))
    foreign = f"per_{uuid.uuid4().hex[:12]}"
    with services(app).db.session() as session:
        session.get(User, capped.id).daily_spend_cap = Decimal("0")
        session.add(
            Persona(id=foreign, user_id=ok.id, name="not yours", description="", keywords=[],
                    palette=[], is_default=False)
        )  # fmt: skip
    first = _post(app, keyed, {"prompt": "coat"}, key="k-1")
    for user in (ok, capped, persona_user):
        _post(app, user, {"prompt": "x", "settings": {"count": 5}})  # 422: verifies the key
    sends = [
        lambda: _post(app, ok, {"prompt": "good one"}),
        lambda: _post(app, capped, {"prompt": "over budget"}),
        lambda: _post(app, persona_user, {"prompt": "coat", "personaId": foreign}),
        lambda: _post(app, keyed, {"prompt": "coat"}, key="k-1"),  # a replay
        lambda: _post(app, keyed, {"prompt": "other coat"}, key="k-1"),  # a conflict
        lambda: _post(app, ok, {"prompt": "good two"}),
    ]
    answers, sizes = _in_one_batch(app, monkeypatch, sends)

    assert sizes == [1, 5]  # k-1 twice: one row sent (the key's first holder answers both)
    codes = [r.status_code for r in answers]
    assert codes == [202, 403, 422, 202, 409, 202], [r.get_json() for r in answers]
    assert answers[1].get_json()["error"]["code"] == "budget_exceeded"
    assert answers[2].get_json()["error"]["details"][0]["field"] == "personaId"
    assert answers[3].get_json()["id"] == first.get_json()["id"]
    assert answers[4].get_json()["error"]["code"] == "idempotency_conflict"
    assert sorted(g.prompt for g in _rows(app, ok.id)) == ["good one", "good two"]
    assert _rows(app, capped.id) == [] and _rows(app, persona_user.id) == []
    assert len(_rows(app, keyed.id)) == 1


def test_the_same_key_twice_in_one_batch_makes_one_row_and_one_answer(make_app, monkeypatch):
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "x", "settings": {"count": 5}})  # verifies the key
    same = {"prompt": "linen shirt"}
    answers, sizes = _in_one_batch(
        app, monkeypatch, [lambda: _post(app, user, same, key="dup")] * 3
    )
    assert sizes == [1, 1]  # the batch sent one row; the others replay it
    assert [r.status_code for r in answers] == [202] * 3
    assert len({r.get_json()["id"] for r in answers}) == 1
    assert [g.id for g in _rows(app, user.id)] == [answers[0].get_json()["id"]]


def test_the_same_key_with_another_body_in_one_batch_is_a_conflict(make_app, monkeypatch):
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "x", "settings": {"count": 5}})  # verifies the key
    answers, _ = _in_one_batch(
        app,
        monkeypatch,
        [
            lambda: _post(app, user, {"prompt": "linen shirt"}, key="dup"),
            lambda: _post(app, user, {"prompt": "wool shirt"}, key="dup"),
        ],
    )
    assert sorted(r.status_code for r in answers) == [202, 409]
    [row] = _rows(app, user.id)
    accepted = next(r for r in answers if r.status_code == 202)
    assert row.id == accepted.get_json()["id"]


def test_the_rate_limit_holds_across_a_batch(make_app, monkeypatch):
    app = make_app(BFF_SUBMIT_RATE_LIMIT="3/60")
    busy, other = _user(app), _user(app)
    assert _post(app, busy, {"prompt": "earlier"}).status_code == 202  # 1 of 3 used
    _post(app, other, {"prompt": "x", "settings": {"count": 5}})  # verifies the key
    sends = [lambda i=i: _post(app, busy, {"prompt": f"coat {i}"}) for i in range(4)]
    sends += [lambda: _post(app, other, {"prompt": "coat"})] * 2
    answers, sizes = _in_one_batch(app, monkeypatch, sends)
    assert sizes == [1, 6]
    codes = [r.status_code for r in answers]
    assert sorted(codes[:4]) == [202, 202, 429, 429] and codes[4:] == [202, 202]
    for r in answers[:4]:
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert len(_rows(app, busy.id)) == 3 and len(_rows(app, other.id)) == 2


def test_a_failed_statement_sends_every_request_down_the_ordinary_path(
    make_app, queue, monkeypatch
):
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "first"})
    failed: list[int] = []

    def broken(db, rows, rate_limit):
        failed.append(len(rows))
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(submit_batch, "insert_many", broken)
    queue.delete("pipeline")
    answers = [_post(app, user, {"prompt": f"shirt {i}"}) for i in range(2)]
    assert failed == [1, 1]
    assert [r.status_code for r in answers] == [202, 202]  # the ORM path stored them
    ids = {r.get_json()["id"] for r in answers}
    stored = {g.id: g for g in _rows(app, user.id)}
    assert ids <= set(stored) and all(stored[i].dispatched_at is not None for i in ids)
    assert set(_queued_ids(queue)) == ids


def test_a_failed_statement_in_a_concurrent_batch_answers_everyone(make_app, monkeypatch):
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "first"})
    combiner = services(app).submits._combiner
    calls: list[int] = []

    def held_then_broken(db, rows, rate_limit):
        calls.append(len(rows))
        if len(calls) == 1:
            deadline = time.monotonic() + 10
            while len(combiner._here().queue) < 5 and time.monotonic() < deadline:
                time.sleep(0.002)
        raise OperationalError("INSERT", {}, Exception("the database is restarting"))

    monkeypatch.setattr(submit_batch, "insert_many", held_then_broken)
    out: list = [None] * 6

    def run(i: int) -> None:
        out[i] = _post(app, user, {"prompt": f"coat {i}"})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    threads[0].start()
    while not calls:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert calls == [1, 5]
    assert [r.status_code for r in out] == [202] * 6
    assert len(_rows(app, user.id)) == 7


def test_a_refused_broker_leaves_exactly_that_batch_to_the_dispatcher(make_app, queue, monkeypatch):
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "first"})
    real_write, writes = chain_message.ChainSender._write, []

    def refuse_the_second(self, data, replies):
        writes.append(replies)
        if len(writes) >= 2:  # the batch under test: every attempt of the retry policy
            raise redis.ConnectionError("connection refused")
        return real_write(self, data, replies)

    monkeypatch.setattr(chain_message.ChainSender, "_write", refuse_the_second)
    monkeypatch.setattr(chain_message.time, "sleep", lambda _s: None)
    queue.delete("pipeline")
    answers, sizes = _in_one_batch(
        app, monkeypatch, [lambda i=i: _post(app, user, {"prompt": f"coat {i}"}) for i in range(5)]
    )
    assert sizes == [1, 5] and writes[0] == 2 and len(writes) == 4  # 1 + 2 retries
    assert [r.status_code for r in answers] == [202] * 5
    refused = {r.get_json()["id"] for r in answers}
    stored = {g.id: g for g in _rows(app, user.id)}
    assert all(stored[i].dispatched_at is None for i in refused)
    [opener] = _queued_ids(queue)  # the opening batch was sent
    assert opener not in refused
    with services(app).db.session() as session:
        assert session.get(Generation, opener).dispatched_at is not None
    [first] = [g for g in stored.values() if g.id not in refused]
    assert first.dispatched_at is not None and len(stored) == 6


def test_insert_many_decides_each_row_as_the_single_statement_would(make_app):
    """Straight on the statement: a batch of several users' rows, with the
    rate limit counted per user across the batch and the other checks per row."""
    app = make_app()
    db = services(app).db
    a, b, capped = _user(app), _user(app), _user(app)
    with services(app).db.session() as session:
        session.get(User, capped.id).daily_spend_cap = Decimal("0")
    now = utcnow()

    def row(user, **kw) -> SubmitRow:
        return SubmitRow(f"gen_{uuid.uuid4().hex[:24]}", user.id, "prompt", {"count": 1}, now, **kw)

    assert insert_submitted(db, row(a), (3, 60))
    rows = [row(a, prompt=f"a{i}") for i in range(3)] + [row(b), row(capped), row(b)]
    rows += [row(b, persona_id="per_nobody"), row(b, idempotency_key="kb")]
    inserted = insert_many(db, rows, (3, 60))
    # a: 1 earlier + 2 of this batch reach 3. b: its persona row fails, yet
    # counts (conservative), so its 4th row is over the limit. capped: the cap.
    ids = [r.generation_id for r in rows]
    assert inserted == {ids[0], ids[1], ids[3], ids[5]}
    # Without a rate limit b's keyed row goes in; its key then stops a second use.
    assert insert_many(db, [rows[-1]], (0, 60)) == {ids[-1]}
    assert insert_many(db, [row(b, idempotency_key="kb")], (0, 60)) == set()


def test_the_request_hash_is_stored_only_with_an_idempotency_key(make_app):
    """It tells a replay from a conflict; nothing reads it without a key."""
    app = make_app()
    user = _user(app)
    keyed = _post(app, user, {"prompt": "coat"}, key="k").get_json()["id"]
    keyless = _post(app, user, {"prompt": "coat"}).get_json()["id"]
    with services(app).db.session() as session:
        assert len(session.get(Generation, keyed).request_hash) == 64
        assert session.get(Generation, keyless).request_hash is None
    assert _post(app, user, {"prompt": "coat"}, key="k").get_json()["id"] == keyed
    assert _post(app, user, {"prompt": "hat"}, key="k").status_code == 409


def test_a_statement_that_committed_before_failing_is_not_inserted_twice(
    make_app, queue, monkeypatch
):
    """The connection is lost after the commit (the statement raises, yet its
    rows are stored): the requests get those generations, sent as usual."""
    app = make_app()
    user = _user(app)
    _post(app, user, {"prompt": "first"})
    real = submit_batch.insert_many

    def committed_then_lost(db, rows, rate_limit):
        real(db, rows, rate_limit)
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(submit_batch, "insert_many", committed_then_lost)
    queue.delete("pipeline")
    answers = [_post(app, user, {"prompt": f"coat {i}"}) for i in range(2)]
    assert [r.status_code for r in answers] == [202, 202], [r.get_json() for r in answers]
    ids = [r.get_json()["id"] for r in answers]
    stored = {g.id: g for g in _rows(app, user.id)}
    assert len(stored) == 3 and set(ids) <= set(stored)
    assert all(stored[i].dispatched_at is not None for i in ids)
    assert _queued_ids(queue) == ids
