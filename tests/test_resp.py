"""``app.resp``: the RESP framing the direct writers use, and the connections
they write on (the chain sender, the events publisher, the read cache's
subscriber)."""

from __future__ import annotations

import pytest
import redis

from app import resp


def test_commands_are_framed_as_redis_reads_them(redis_url):
    conn = resp.connect(redis_url, socket_timeout=2)
    try:
        conn.send_packed_command([resp.command(b"LPUSH", b"q", b"a b", b"")], False)
        assert conn.read_response() == 2
        conn.send_packed_command([resp.publish(b"nobody", b"x")], False)
        assert conn.read_response() == 0
        conn.send_command("LRANGE", "q", 0, -1)
        assert conn.read_response() == [b"", b"a b"]
    finally:
        conn.disconnect()


def test_connect_selects_the_urls_db(redis_url):
    conn = resp.connect(redis_url, socket_timeout=2)
    try:
        conn.send_command("CLIENT", "INFO")
        info = conn.read_response().decode()
    finally:
        conn.disconnect()
    assert f" db={redis_url.rsplit('/', 1)[1]} " in info


def test_a_url_that_names_its_connection_class_gets_it(tmp_path):
    """``unix://`` (and ``rediss://``) URLs name a connection class of their
    own: it is used, not passed on as an option (which raised TypeError)."""
    with pytest.raises(redis.ConnectionError):
        resp.connect(f"unix://{tmp_path}/no-such.sock", socket_connect_timeout=1)
