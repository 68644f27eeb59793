"""/api/stats' Insights fields on PostgreSQL: the same seeded data and checks
as on SQLite (tests/test_insights.py), and every query the route runs can be
answered through indexes: with sequential scans priced out, no plan reads a
whole table."""

from __future__ import annotations

import secrets

from tests.conftest import make_user
from tests.support.plans import assert_no_table_read_whole, plans, selects_run_by
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
    "charges",
}


def test_stats_insights_on_postgres(pg_app, pg_user, monkeypatch):
    client = pg_app.test_client()
    other = make_user(pg_app, f"pg-{secrets.token_hex(4)}")
    seeded = seed(pg_app, client, pg_user, monkeypatch)
    check_insights(pg_app, client, pg_user, other, seeded)


def test_every_stats_query_has_an_index_path(pg_app, pg_user, monkeypatch):
    client = pg_app.test_client()
    seed(pg_app, client, pg_user, monkeypatch)
    engine = pg_app.extensions["bff"].db.engine

    def stats() -> None:
        assert client.get("/api/stats", headers=pg_user.headers).status_code == 200

    statements = selects_run_by(engine, stats)
    assert len(statements) >= 9  # the totals, the days, ... and the five Insights reads
    for statement, _, plan in plans(engine, statements):
        assert_no_table_read_whole(plan, TABLES, statement)
