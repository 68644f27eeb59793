"""The maintenance beat's looks on PostgreSQL (it runs every few seconds,
whatever the history): with sequential scans priced out, no statement that
``redispatch_stalled`` or ``expire_overdue`` runs reads a whole table. An OR
of "unfinished" and "completed with an open late refine" used to read every
generation, and the late-refine look every stage row."""

from __future__ import annotations

import json

from sqlalchemy import event

from app.pipeline import maintenance
from tests.integration.test_insights_postgres import seq_scans
from tests.support.pipeline import run_all, submit_prompt

TABLES = {"generations", "generation_stages"}


def test_the_beats_looks_have_an_index_path(pg_app, pg_user):
    client, s = pg_app.test_client(), pg_app.extensions["bff"]
    gen_id = submit_prompt(client, pg_user.headers, "red silk dress", provider="local")
    run_all(pg_app, gen_id)  # a completed generation, with its stage rows
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(s.db.engine, "before_cursor_execute", record)
    try:
        maintenance.redispatch_stalled(s.db, s.celery, s.settings)
        maintenance.expire_overdue(s.db, s.settings)
    finally:
        event.remove(s.db.engine, "before_cursor_execute", record)
    assert len(statements) >= 4  # two looks to re-send, two to time out
    refine_looks = 0
    with s.db.engine.connect() as conn:  # one transaction, rolled back with the setting
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in statements:
            [[plan]] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).one()
            plan = plan if isinstance(plan, dict) else json.loads(plan)[0]
            scanned = seq_scans(plan["Plan"]) & TABLES
            assert not scanned, f"{scanned} read whole by:\n{statement}"
            if "generation_stages" in statement and "refine" in str(params):
                # The open refines come from their partial index, not every stage row.
                assert "ix_generation_stages_open_refine" in json.dumps(plan), statement
                refine_looks += 1
        conn.rollback()
    assert refine_looks == 2  # the re-send's and the time-out's


def test_the_open_refine_index_names_the_states_it_stands_for():
    """The index's predicate is SQL text (models cannot import the states)."""
    from app.domain.models import OPEN_REFINE
    from app.domain.states import LATE_STAGE, S_PENDING, S_RUNNING

    assert OPEN_REFINE == f"name = '{LATE_STAGE}' AND status IN ('{S_PENDING}', '{S_RUNNING}')"
