"""/api/stats' Insights fields on PostgreSQL: the same seeded data and checks
as on SQLite (tests/test_insights.py), and every query the route runs can be
answered through indexes: with sequential scans priced out, no plan reads a
whole table."""

from __future__ import annotations

import json
import secrets

from sqlalchemy import event

from tests.conftest import make_user
from tests.test_insights import check_insights, seed

# The tables /api/stats reads; each has an index for the caller's rows.
TABLES = {
    "users",
    "api_keys",
    "generations",
    "generation_stages",
    "generation_assets",
    "generation_feedback",
    "personas",
    "prompt_token_scores",
}


def test_stats_insights_on_postgres(pg_app, pg_user, monkeypatch):
    client = pg_app.test_client()
    other = make_user(pg_app, f"pg-{secrets.token_hex(4)}")
    seeded = seed(pg_app, client, pg_user, monkeypatch)
    check_insights(pg_app, client, pg_user, other, seeded)


def seq_scans(plan: dict) -> set[str]:
    found = {plan["Relation Name"]} if plan.get("Node Type") == "Seq Scan" else set()
    for child in plan.get("Plans", []):
        found |= seq_scans(child)
    return found


def test_every_stats_query_has_an_index_path(pg_app, pg_user, monkeypatch):
    client = pg_app.test_client()
    seed(pg_app, client, pg_user, monkeypatch)
    engine = pg_app.extensions["bff"].db.engine
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get("/api/stats", headers=pg_user.headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(statements) >= 9  # the totals, the days, ... and the five Insights reads
    with engine.connect() as conn:  # one transaction, rolled back: the setting goes with it
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in statements:
            [[plan]] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).one()
            plan = plan if isinstance(plan, dict) else json.loads(plan)[0]
            scanned = seq_scans(plan["Plan"]) & TABLES
            assert not scanned, f"{scanned} read whole by:\n{statement}"
        conn.rollback()
