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
from tests.support.locks import pg_url, wait_until_blocked_by

pytestmark = pytest.mark.services
BUMP = "UPDATE users SET daily_spend_cap = daily_spend_cap + {n} WHERE id = {id}"


def test_a_transaction_aborted_to_break_a_deadlock_runs_again(pg_app):
    db = pg_app.extensions["bff"].db
    a, b = (make_user(pg_app, f"deadlock-{n}-{time.time_ns()}").id for n in (1, 2))
    with db.session() as s:
        s.execute(text(f"UPDATE users SET daily_spend_cap = 0 WHERE id IN ({a}, {b})"))
    url = pg_url(db)
    runs: list[int] = []

    def work(session) -> str:
        runs.append(1)
        session.execute(text(BUMP.format(n=1, id=b)))
        # Waits on the other connection's row a; that one then waits on our row b.
        session.execute(text(BUMP.format(n=1, id=a)))
        return "committed"

    with psycopg.connect(url) as other:
        # The other side checks for a deadlock only after ours has: on a busy
        # machine a check due 0.2 s after ours could run first, and abort it.
        other.execute("SET deadlock_timeout = '10s'")
        other.execute(BUMP.format(n=10, id=a))
        result: list[str] = []
        worker = threading.Thread(target=lambda: result.append(db.transaction(work)))
        worker.start()
        # Ours holds row b and waits on row a: it waits first, so its deadlock
        # check (after deadlock_timeout) runs first.
        wait_until_blocked_by(url, other.info.backend_pid)
        time.sleep(0.2)  # a margin for the two deadlock checks, deadlock_timeout apart
        other.execute(BUMP.format(n=10, id=b))
        other.commit()
        worker.join(30)
    # Aborted at least once, then committed. (Twice, at times: the retry can
    # take row b again before the other connection does, and meet it anew.)
    assert result == ["committed"] and len(runs) >= 2, (result, runs)
    with db.session() as s:
        caps = dict(
            s.execute(text(f"SELECT id, daily_spend_cap FROM users WHERE id IN ({a}, {b})")).all()
        )
    assert caps == {a: Decimal(11), b: Decimal(11)}  # the aborted run left nothing behind
