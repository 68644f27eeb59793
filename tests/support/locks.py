"""Row-lock waits on PostgreSQL, for tests that make one connection wait
behind another's transaction before letting it go."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from app.platform.db import Database
from tests.support.procs import wait_for

T = TypeVar("T")


def pg_url(db: Database) -> str:
    """The app database's URL as psycopg itself takes it."""
    return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def wait_until_blocked_by(url: str, blocker_pid: int, timeout: float = 10) -> None:
    """Until a session of the database waits on a lock that the backend
    ``blocker_pid`` holds (``other.info.backend_pid``)."""
    with psycopg.connect(url, autocommit=True) as watcher:

        def blocked() -> bool:
            (n,) = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (blocker_pid,),
            ).fetchone()
            return n > 0

        wait_for(blocked, timeout, f"a session blocked by backend {blocker_pid}", interval=0.02)


def run_behind(
    url: str, blocker_pid: int, call: Callable[[], T]
) -> tuple[threading.Thread, list[T]]:
    """``call`` on a thread of its own, returned once it waits on a lock the
    backend ``blocker_pid`` holds: (the thread, the list its result goes in)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    wait_until_blocked_by(url, blocker_pid)
    return thread, results
