"""``Database.transaction`` on PostgreSQL: a transaction the server aborts to
break a real deadlock runs again and commits (a batch's cancel locks many
generations while workers lock them one at a time)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import make_user

pytestmark = pytest.mark.services
BUMP = "UPDATE users SET daily_spend_cap = daily_spend_cap + {n} WHERE id = {id}"


def wait_for_a_lock_wait(url: str, timeout: float = 10) -> None:
    """Until a session of this database waits on a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE users SET daily_spend_cap%'"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the transaction never waited on the other's row")


def test_a_transaction_aborted_to_break_a_deadlock_runs_again(pg_app):
    db = pg_app.extensions["bff"].db
    a, b = (make_user(pg_app, f"deadlock-{n}-{time.time_ns()}").id for n in (1, 2))
    with db.session() as s:
        s.execute(text(f"UPDATE users SET daily_spend_cap = 0 WHERE id IN ({a}, {b})"))
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    runs: list[int] = []
    holding = threading.Event()

    def work(session) -> str:
        runs.append(1)
        session.execute(text(BUMP.format(n=1, id=b)))
        holding.set()
        # Waits on the other connection's row a; that one then waits on our row b.
        session.execute(text(BUMP.format(n=1, id=a)))
        return "committed"

    with psycopg.connect(url) as other:
        other.execute(BUMP.format(n=10, id=a))
        result: list[str] = []
        worker = threading.Thread(target=lambda: result.append(db.transaction(work)))
        worker.start()
        assert holding.wait(10)
        # Ours waits first, so its deadlock check (after deadlock_timeout) runs first.
        wait_for_a_lock_wait(url)
        time.sleep(0.2)  # a margin for the two deadlock checks, deadlock_timeout apart
        other.execute(BUMP.format(n=10, id=b))
        other.commit()
        worker.join(30)
    assert result == ["committed"] and len(runs) == 2, (result, runs)
    with db.session() as s:
        caps = dict(
            s.execute(text(f"SELECT id, daily_spend_cap FROM users WHERE id IN ({a}, {b})")).all()
        )
    assert caps == {a: Decimal(11), b: Decimal(11)}  # the aborted run left nothing behind
