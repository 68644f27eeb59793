"""Finding the real services, or skipping loudly (failing under
``BFF_REQUIRE_SERVICES=1``, as CI runs)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REQUIRE = os.environ.get("BFF_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("BFF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("BFF_TEST_REDIS_PORT", "6379"))


def unavailable(what: str) -> None:
    msg = f"*** {what} is not available: this test NEEDS it and is SKIPPED ***"
    if REQUIRE:
        pytest.fail(f"{what} is required (BFF_REQUIRE_SERVICES=1) but not available")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ok() -> bool:
    try:
        import redis

        return bool(redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=2).ping())
    except Exception:
        return False


def postgres_ok() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:
        return False


@contextmanager
def scratch_postgres_db() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    import psycopg

    name = f"bff_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_db_number() -> int:
    """Each test session claims its own Redis db (1-15) with a lease in db 0, so
    sessions running side by side never share queues or rate-limit keys."""
    import redis

    r = redis.Redis(REDIS_HOST, REDIS_PORT, db=0)
    for n in range(1, 16):
        if r.set(f"bff-test:db:{n}", os.getpid(), nx=True, ex=3600):
            if not _connected(r, n):
                return n
            r.delete(f"bff-test:db:{n}")
            continue
        holder = r.get(f"bff-test:db:{n}")
        if holder is not None and not _pid_alive(int(holder)) and not _connected(r, n):
            r.set(f"bff-test:db:{n}", os.getpid(), ex=3600)
            return n
    raise RuntimeError("all Redis test databases 1-15 are in use")


def _connected(r, n: int) -> bool:
    """Someone is still connected to db ``n``: the workers of a run that was
    killed (its lease gone with it) would take this session's messages, and
    its generations would stall, their stages delivered to another database."""
    return any(client.get("db") == str(n) for client in r.client_list())


@contextmanager
def own_redis_db() -> Iterator[str]:
    """The URL of a Redis db number of our own (``redis_db_number``), emptied
    first and released after."""
    import redis

    n = redis_db_number()
    redis.Redis(REDIS_HOST, REDIS_PORT, db=n).flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{n}"
    finally:
        release_redis_db(n)


def release_redis_db(n: int) -> None:
    import redis

    r = redis.Redis(REDIS_HOST, REDIS_PORT, db=0)
    if r.get(f"bff-test:db:{n}") == str(os.getpid()).encode():
        r.delete(f"bff-test:db:{n}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
