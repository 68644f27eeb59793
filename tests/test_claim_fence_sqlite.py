"""The claim's fence on SQLite (the embedded default): SQLite has no row
locks and pysqlite begins a transaction only at the first write, so a claim
that read the stages before another copy's claim committed would claim the
stage too. The fence takes SQLite's write lock before it reads."""

from __future__ import annotations

import sqlite3
import threading

from sqlalchemy import event, text

from app.pipeline.endings import STOP
from app.pipeline.runner import claim_stage, transaction
from tests.support.pipeline import claimed, load, new_generation, services, stages_by_name


def test_a_claim_behind_another_copys_claim_stops(app, user):
    s = services(app)
    gen_id = new_generation(app, user)
    claimed(app, gen_id, attempts=1, task_id="t-first")
    with s.db.session() as session:  # analyze pending again: the next claim is the test's
        session.execute(
            text("UPDATE generation_stages SET status = 'pending', attempts = 0, task_id = NULL")
        )
    result, began = [], threading.Event()

    def claim(session, after):
        return claim_stage(session, s.settings, gen_id, "analyze", "t-second", False, after=after)

    def sent(*_) -> None:  # the claim's first statement went out
        began.set()

    def second_claim() -> None:
        with app.app_context(), s.db.Session() as session:
            result.append(transaction(session, claim))

    path = s.db.engine.url.database
    other = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        other.execute("BEGIN IMMEDIATE")  # another copy's claim, under way
        other.execute(
            "UPDATE generation_stages SET status = 'running', attempts = 1, task_id = 't-first'"
            " WHERE generation_id = ? AND name = 'analyze'",
            (gen_id,),
        )
        worker = threading.Thread(target=second_claim)
        event.listen(s.db.engine, "before_cursor_execute", sent)
        worker.start()
        assert began.wait(10)
        worker.join(0.3)
        assert worker.is_alive()  # the second claim has begun, and waits for the other
        other.execute("COMMIT")
        worker.join(30)
    finally:
        event.remove(s.db.engine, "before_cursor_execute", sent)
        other.close()
    assert result == [STOP]
    analyze = stages_by_name(load(app, gen_id))["analyze"]
    assert (analyze["status"], analyze["attempts"]) == ("running", 1)
