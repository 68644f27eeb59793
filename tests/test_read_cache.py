"""The per-process cache of status reads (app/readcache.py): what it may keep
(completed and canceled generations only), that a hit serves the same bytes
with no I/O and checks the owner, and that it never serves a deleted
generation: the deleting process drops it at once, other processes through
Redis pub/sub, and while the subscriber is down nothing is cached."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, update

from app import create_app
from app.config import Settings
from app.models import GenerationStage
from app.pipeline import STAGE_FUNCS
from app.pipeline.context import StageFailed
from app.pipeline.runner import write_stage_rows
from app.readcache import CHANNEL, CLEAR_ALL, ReadCache, channel_for
from tests.conftest import make_user
from tests.support.pipeline import run_all, services, submit_prompt


@pytest.fixture
def make_app(app_config, redis_url) -> Iterator[Callable[..., object]]:
    """Apps on one SQLite file and one Redis db: each is another "process"
    with a cache and a subscriber of its own."""
    made = []

    def make(**extra: str):
        app = create_app({**app_config, "REDIS_URL": redis_url, **extra})
        made.append(app)
        return app

    yield make
    for app in made:
        services(app).read_cache.close()


@pytest.fixture
def capp(make_app):
    app = make_app()
    assert services(app).read_cache.wait_ready(5), "the subscriber did not subscribe"
    return app


def statements(app) -> list[str]:
    seen: list[str] = []
    event.listen(
        services(app).db.engine, "before_cursor_execute", lambda _c, _cur, s, *_a: seen.append(s)
    )
    return seen


def completed(app, client, user) -> str:
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    return gen_id


def get(client, user, gen_id: str):
    return client.get(f"/api/generate/{gen_id}", headers=user.headers)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# ------------------------------------------------------------------ what is served


def test_a_hit_serves_the_same_bytes_with_no_io(capp):
    client, user = capp.test_client(), make_user(capp, "alice")
    gen_id = completed(capp, client, user)
    miss = get(client, user, gen_id)  # from the database; also verifies the key
    assert miss.status_code == 200 and miss.get_json()["status"] == "completed"
    cache = services(capp).read_cache
    assert gen_id in cache._entries

    seen = statements(capp)
    hit = get(client, user, gen_id)
    assert seen == []  # no authentication query, no status read
    assert hit.status_code == 200
    assert hit.get_data() == miss.get_data()
    assert list(hit.headers.items()) == list(miss.headers.items())
    # And both are exactly what Flask makes of the dict.
    with capp.test_request_context():
        assert miss.get_data() == capp.json.response(miss.get_json()).get_data()


def test_a_hit_checks_the_owner(capp):
    client = capp.test_client()
    owner, other = make_user(capp, "owner"), make_user(capp, "other")
    gen_id = completed(capp, client, owner)
    unknown = get(client, other, "gen_doesnotexist")  # what a read answers for not-yours
    assert get(client, owner, gen_id).status_code == 200
    assert gen_id in services(capp).read_cache._entries
    resp = get(client, other, gen_id)
    assert resp.status_code == 404
    assert resp.get_data() == unknown.get_data()
    assert get(client, owner, gen_id).status_code == 200


def test_unfinished_and_failed_generations_are_not_cached(capp, monkeypatch):
    client, user = capp.test_client(), make_user(capp, "alice")
    pending = submit_prompt(client, user.headers)

    def broken(ctx):
        raise StageFailed("REPLICATE_API_TOKEN not configured")

    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, "generate", broken)
        failed = completed(capp, client, user)
    get(client, user, pending)  # the key is verified: later statements are reads
    seen = statements(capp)
    for gen_id, status in ((pending, "pending"), (failed, "failed")):
        for _ in range(2):
            seen.clear()
            resp = get(client, user, gen_id)
            assert resp.get_json()["status"] == status and len(seen) == 1
    assert len(services(capp).read_cache) == 0
    # A failed one can be retried, and then the client must see it move.
    assert client.post(f"/api/generate/{failed}/retry", headers=user.headers).status_code == 202
    assert get(client, user, failed).get_json()["status"] == "pending"


def test_canceled_is_cached_unless_a_stage_is_still_running(capp):
    client, user = capp.test_client(), make_user(capp, "alice")
    cache = services(capp).read_cache
    quiet, busy = submit_prompt(client, user.headers), submit_prompt(client, user.headers)
    with services(capp).db.session() as session:  # a stage copy in flight on ``busy``
        write_stage_rows(session.connection(), busy)  # as its claim would
        session.execute(
            update(GenerationStage)
            .where(GenerationStage.generation_id == busy, GenerationStage.name == "analyze")
            .values(status="running", attempts=1)
        )
    for gen_id in (quiet, busy):
        assert (
            client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
        )
        assert get(client, user, gen_id).get_json()["status"] == "canceled"
    assert quiet in cache._entries
    assert busy not in cache._entries  # its stage will still record how it ended


# ------------------------------------------------------------------ invalidation


def test_delete_drops_the_entry_in_its_own_process_at_once(capp):
    client, user = capp.test_client(), make_user(capp, "alice")
    gen_id = completed(capp, client, user)
    get(client, user, gen_id)
    cache = services(capp).read_cache
    assert gen_id in cache._entries
    # Publish where our own subscriber does not listen: only the local drop can act.
    cache.channel += ":elsewhere"
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    assert gen_id not in cache._entries
    assert get(client, user, gen_id).status_code == 404


def test_delete_in_another_process_reaches_this_one(make_app):
    a, b = make_app(), make_app()
    for app in (a, b):
        assert services(app).read_cache.wait_ready(5)
    user = make_user(a, "alice")
    gen_id = completed(a, a.test_client(), user)
    assert get(b.test_client(), user, gen_id).status_code == 200
    cache_b = services(b).read_cache
    assert gen_id in cache_b._entries

    assert (
        a.test_client().delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    )
    assert wait_for(lambda: gen_id not in cache_b._entries, 2.0)
    assert get(b.test_client(), user, gen_id).status_code == 404


def test_a_message_on_the_channel_drops_the_entry(capp, redis_url):
    import redis

    client, user = capp.test_client(), make_user(capp, "alice")
    first, second = completed(capp, client, user), completed(capp, client, user)
    for gen_id in (first, second):
        get(client, user, gen_id)
    cache = services(capp).read_cache
    r = redis.Redis.from_url(redis_url)
    assert r.publish(cache.channel, first) >= 1
    assert wait_for(lambda: first not in cache._entries, 2.0)
    assert second in cache._entries
    r.publish(cache.channel, CLEAR_ALL)
    assert wait_for(lambda: len(cache) == 0, 2.0)


def test_a_read_that_overlaps_an_invalidation_is_not_cached(capp):
    """The read may predate the deletion whose message was just handled."""
    cache = services(capp).read_cache
    token = cache.token()
    cache.drop("gen_x")  # e.g. the message arrives while the read is in flight
    assert not cache.put("gen_x", 1, b"{}", {}, token)
    assert cache.put("gen_x", 1, b"{}", {}, cache.token())
    assert cache.get("gen_x") is not None


def test_a_read_begun_before_the_subscriber_was_ready_is_not_cached(make_app):
    """A deletion published before we subscribed was never heard."""
    cache = services(make_app()).read_cache
    token = cache.token()
    assert cache.wait_ready(5)
    assert not cache.put("gen_x", 1, b"{}", {}, token)


# ------------------------------------------------------------------ subscriber down


def test_while_the_subscriber_is_down_the_cache_is_bypassed(capp, redis_url, monkeypatch):
    import redis

    client, user = capp.test_client(), make_user(capp, "alice")
    gen_id = completed(capp, client, user)
    get(client, user, gen_id)
    cache = services(capp).read_cache
    assert gen_id in cache._entries
    monkeypatch.setattr(cache, "RETRY_MIN", 1.0)  # time to look while it is down

    redis.Redis.from_url(redis_url).client_kill_filter(_id=cache.subscriber_client_id)
    assert wait_for(lambda: not cache.ready, 2.0)
    assert len(cache) == 0  # a deletion published now would be missed: forget everything
    seen = statements(capp)
    for _ in range(2):
        assert get(client, user, gen_id).status_code == 200
    assert len(seen) == 2 and len(cache) == 0  # read from the database, not kept

    assert cache.wait_ready(5)  # resubscribed: caching again
    get(client, user, gen_id)
    seen.clear()
    get(client, user, gen_id)
    assert seen == []


def test_silence_counts_as_a_disconnect(capp, monkeypatch):
    """A subscriber whose PING goes unanswered (a silent network partition)
    gives up and empties the cache."""
    client, user = capp.test_client(), make_user(capp, "alice")
    gen_id = completed(capp, client, user)
    get(client, user, gen_id)
    cache = services(capp).read_cache
    assert gen_id in cache._entries
    monkeypatch.setattr(cache, "RETRY_MIN", 2.0)
    # Pretend the PING got lost: nothing will ever answer it.
    from redis.connection import Connection

    real = Connection.send_command

    def drop_ping(self, *args, **kwargs):
        if args and args[0] == "PING":
            return None
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_command", drop_ping)
    monkeypatch.setattr(cache, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(cache, "PONG_TIMEOUT", 0.3)
    assert wait_for(lambda: not cache.ready, 3.0)
    assert len(cache) == 0


def test_unreachable_redis_means_no_cache(app_config):
    app = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    cache = services(app).read_cache
    try:
        client, user = app.test_client(), make_user(app, "alice")
        gen_id = completed(app, client, user)
        get(client, user, gen_id)
        seen = statements(app)
        assert get(client, user, gen_id).status_code == 200
        assert len(seen) == 1 and not cache.ready and len(cache) == 0
    finally:
        cache.close()


def test_without_redis_the_cache_is_off(app, client, user):
    cache = services(app).read_cache
    assert not cache.enabled
    gen_id = completed(app, client, user)
    get(client, user, gen_id)
    seen = statements(app)
    assert get(client, user, gen_id).status_code == 200
    assert len(seen) == 1 and len(cache) == 0


# ------------------------------------------------------------------ bounds and settings


def test_size_and_ttl_bound_the_cache(redis_url):
    now = [1000.0]
    cache = ReadCache(redis_url, max_entries=2, ttl=60, clock=lambda: now[0])
    try:
        assert cache.wait_ready(5)
        for gid in ("a", "b", "c"):
            assert cache.put(gid, 1, gid.encode(), {}, cache.token())
        assert cache.get("a") is None and cache.get("b") and cache.get("c")  # oldest evicted
        now[0] += 60.5
        assert cache.get("b") is None  # expired: read the database again
    finally:
        cache.close()


def test_settings():
    s = Settings.from_env({})
    assert (s.read_cache_size, s.read_cache_ttl) == (10_000, 60.0)
    s = Settings.from_env({"BFF_READ_CACHE_SIZE": "0", "BFF_READ_CACHE_TTL": "5"})
    assert (s.read_cache_size, s.read_cache_ttl) == (0, 5.0)
    assert not ReadCache("redis://127.0.0.1:6379/3", max_entries=0).enabled
    assert not ReadCache(None).enabled
    assert channel_for("redis://127.0.0.1:6379/3") == f"{CHANNEL}:3"
    assert channel_for("redis://127.0.0.1:6379") == f"{CHANNEL}:0"


def test_a_size_of_zero_turns_it_off(make_app):
    app = make_app(BFF_READ_CACHE_SIZE="0")
    client, user = app.test_client(), make_user(app, "alice")
    gen_id = completed(app, client, user)
    get(client, user, gen_id)
    seen = statements(app)
    get(client, user, gen_id)
    assert len(seen) == 1 and len(services(app).read_cache) == 0


def test_a_stage_recorded_after_the_job_ended_drops_the_cached_read(capp, monkeypatch):
    """A copy of a stage that stalled and was taken over can still record its
    end on the completed generation: the runner announces the change."""
    from app.models import Generation
    from app.pipeline.context import StageResult
    from app.pipeline.runner import run_stage

    client, user = capp.test_client(), make_user(capp, "alice")
    gen_id = completed(capp, client, user)
    s = services(capp)
    with s.db.session() as session:  # copy A holds ``store`` again
        gen = session.get(Generation, gen_id)
        gen.status, gen.completed_at = "processing", None
        st = gen.stage("store")
        st.status, st.task_id = "running", "copy-a"
    cache = s.read_cache

    def store_while_copy_b_finishes(ctx):
        with s.db.session() as session:  # copy B ends the job meanwhile
            gen = session.get(Generation, gen_id)
            gen.status = "completed"
            gen.stage("store").status = "completed"
        assert get(client, user, gen_id).get_json()["status"] == "completed"
        assert gen_id in cache._entries
        return StageResult({"late": True})

    monkeypatch.setitem(STAGE_FUNCS, "store", store_while_copy_b_finishes)
    run_stage(s.db, s.settings, s.storage, gen_id, "store", task_id="copy-a")
    assert wait_for(lambda: gen_id not in cache._entries, 2.0)
    body = get(client, user, gen_id).get_json()
    assert body["status"] == "completed" and body["stages"][-1]["output"] == {"late": True}
