"""Redis commands in the protocol's own framing (RESP), for the few places
that write to a socket themselves (the chain sender, the events publisher,
the benchmark's listener): redis-py's general ``pack_command`` was a visible
share of each of those sends (2.1 us per PUBLISH against 0.4 here)."""

from __future__ import annotations


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
