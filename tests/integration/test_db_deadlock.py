"""``Database.transaction`` on PostgreSQL: a transaction the server aborts to
break a real deadlock runs again and commits (a batch's cancel locks many
generations while workers lock them one at a time)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.services


def test_a_transaction_aborted_to_break_a_deadlock_runs_again(pg_app):
    db = pg_app.extensions["bff"].db
    with db.session() as s:
        s.execute(text("CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY, n int)"))
        s.execute(text("DELETE FROM deadlock_probe"))
        s.execute(text("INSERT INTO deadlock_probe VALUES (1, 0), (2, 0)"))
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    runs: list[int] = []
    holding = threading.Event()

    def work(session) -> str:
        runs.append(1)
        session.execute(text("UPDATE deadlock_probe SET n = n + 1 WHERE id = 2"))
        holding.set()
        # Waits on the other connection's row 1; that one then waits on our row 2.
        session.execute(text("UPDATE deadlock_probe SET n = n + 1 WHERE id = 1"))
        return "committed"

    with psycopg.connect(url) as other:
        other.execute("UPDATE deadlock_probe SET n = n + 10 WHERE id = 1")
        result: list[str] = []
        worker = threading.Thread(target=lambda: result.append(db.transaction(work)))
        worker.start()
        assert holding.wait(10)
        time.sleep(0.3)  # our transaction waits first, so its deadlock check runs first
        other.execute("UPDATE deadlock_probe SET n = n + 10 WHERE id = 2")
        other.commit()
        worker.join(30)
    assert result == ["committed"] and len(runs) == 2, (result, runs)
    with db.session() as s:
        rows = dict(s.execute(text("SELECT id, n FROM deadlock_probe")).all())
    assert rows == {1: 11, 2: 11}  # the aborted run left nothing; the second counted once
