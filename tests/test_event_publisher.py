"""Live events are published without waiting for Redis's replies
(``events.Publisher``: one connection in ``CLIENT REPLY OFF`` mode). They must
still arrive, in order, and a connection Redis dropped must be replaced."""

from __future__ import annotations

import json
import os
import time

from app.config import Settings
from app.events import Publisher, channel, publish


def _listen(redis_url: str, name: str):
    import redis

    sub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    sub.subscribe(name)
    assert sub.get_message(timeout=2) is None  # consume the subscribe confirmation
    return sub


def _received(sub, n: int, timeout: float = 3.0) -> list[str]:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.1)
        if msg is not None:
            got.append(msg["data"].decode())
    return got


def test_events_arrive_in_order(redis_url):
    gen_id = f"gen_pub_{os.getpid()}_{time.monotonic_ns()}"
    sub = _listen(redis_url, channel(gen_id))
    settings = Settings.from_env({"REDIS_URL": redis_url})
    for i in range(50):
        publish(settings, gen_id, "stage", {"n": i})
    got = [json.loads(m)["data"]["n"] for m in _received(sub, 50)]
    assert got == list(range(50))


def test_the_connection_sends_no_replies_and_is_replaced_when_dropped(redis_url):
    import redis

    name = f"bff:test:pub:{os.getpid()}:{time.monotonic_ns()}"
    sub = _listen(redis_url, name)
    pub = Publisher(redis_url)
    pub.publish(name, "one")
    assert _received(sub, 1) == ["one"]
    conn = pub._conn
    # Nothing waits to be read on our side: Redis sent no reply to PUBLISH.
    assert not conn.can_read(timeout=0.2)
    # Redis drops the connection: the next publishes reconnect by themselves
    # (the first write after the drop may vanish with the old socket).
    admin = redis.Redis.from_url(redis_url)
    host, port = conn._sock.getsockname()[:2]
    assert admin.client_kill_filter(addr=f"{host}:{port}") == 1  # only ours
    deadline = time.monotonic() + 3
    seen: list[str] = []
    while "again" not in seen and time.monotonic() < deadline:
        pub.publish(name, "again")
        seen += _received(sub, 1, timeout=0.2)
    assert "again" in seen and pub._conn is not conn


def test_a_fork_gets_its_own_connection(redis_url):
    pub = Publisher(redis_url)
    pub.publish("bff:test:fork", "x")
    first = pub._conn
    pub._pid = -1  # as seen from a forked child
    pub.publish("bff:test:fork", "y")
    assert pub._conn is not first


def test_a_server_that_refuses_reply_off_still_gets_events_and_replies_are_read(redis_url):
    """An ACL user without CLIENT (as some managed Redis offers): the refusal
    is noticed and replies are read, so nothing piles up on the server."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    user, password = f"bff-pub-{os.getpid()}", "pw-test"
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-client"],
    )
    try:
        db = redis_url.rsplit("/", 1)[1]
        url = f"redis://{user}:{password}@127.0.0.1:6379/{db}"
        name = f"bff:test:acl:{os.getpid()}:{time.monotonic_ns()}"
        sub = _listen(redis_url, name)
        pub = Publisher(url)
        for i in range(20):
            pub.publish(name, str(i))
        assert _received(sub, 20) == [str(i) for i in range(20)]
        assert pub._replies is True
        assert not pub._conn.can_read(timeout=0.1)  # every reply was read
    finally:
        admin.acl_deluser(user)
