"""Redis commands in the protocol's own framing (RESP), for the few places
that write to a socket themselves (the chain sender, the events publisher,
the benchmark's listener): redis-py's general ``pack_command`` was a visible
share of each of those sends (2.1 us per PUBLISH against 0.4 here). And the
connections they write on."""

from __future__ import annotations

from typing import Any


def connect(url: str, **options: Any) -> Any:
    """A connected redis-py ``Connection`` of its own (no pool) to ``url``,
    of the class the URL names (``rediss://``: TLS, ``unix://``: a socket
    file), with ``options`` (timeouts, ``protocol``, ...); AUTH, SELECT and
    the client's handshake done. Raises redis-py's errors."""
    from redis.connection import Connection, parse_url

    kwargs = parse_url(url)
    cls = kwargs.pop("connection_class", Connection)
    conn = cls(**kwargs, **options)
    conn.connect()
    return conn


def command(*parts: bytes) -> bytes:
    """One Redis command: ``command(b"LPUSH", key, value, ...)``."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out += (b"$%d\r\n" % len(p), p, b"\r\n")
    return b"".join(out)


def bulk(part: bytes) -> bytes:
    """One argument of a command (a bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(part), part)


def publish_head(topic: bytes) -> bytes:
    """``PUBLISH topic <message>`` but for its last part, the message's
    ``bulk``: for many messages to one topic."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(topic), topic)


def publish(topic: bytes, message: bytes) -> bytes:
    return publish_head(topic) + bulk(message)
