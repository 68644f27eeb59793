"""Query plans on PostgreSQL, for tests that a code path's reads can all be
answered through indexes: record the SELECTs an action runs, then EXPLAIN
each with sequential scans priced out (one transaction, rolled back)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def selects_run_by(engine: Engine, action: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The SELECT statements (with their parameters) ``action`` runs."""
    statements: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def seq_scans(plan: dict) -> set[str]:
    found = {plan["Relation Name"]} if plan.get("Node Type") == "Seq Scan" else set()
    for child in plan.get("Plans", []):
        found |= seq_scans(child)
    return found


def plans(engine: Engine, statements: list[tuple[str, Any]]) -> Iterator[tuple[str, Any, dict]]:
    """(statement, parameters, plan) of each, planned with sequential scans off."""
    with engine.connect() as conn:  # the setting goes with the rolled-back transaction
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in statements:
            [[plan]] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).one()
            plan = plan if isinstance(plan, dict) else json.loads(plan)[0]
            yield statement, params, plan["Plan"]
        conn.rollback()


def assert_no_table_read_whole(plan: dict, tables: set[str], statement: str) -> None:
    scanned = seq_scans(plan) & tables
    assert not scanned, f"{scanned} read whole by:\n{statement}"
