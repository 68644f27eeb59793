"""Benchmark 4: database cost per generation.

In-process on PostgreSQL: submit through the API (Flask test client), run the
seven stages with ``app.pipeline.runner.run_stage`` (what the Celery tasks
call), then read the generation back. SQLAlchemy engine events count every
statement (``before_cursor_execute``) and every commit (``commit``) per
phase. The status read's statements are EXPLAINed on Postgres (with
sequential scans disabled, since a table of a few rows is always cheaper to
scan: the question is whether an index serves the query at all).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import event

from .harness import services, table

N = 20


@dataclass
class Counter:
    # (statement, parameters, commits before it). Authentication is the
    # statements on api_keys (none once the process has verified the key:
    # app.api.auth caches it for KEY_CACHE_TTL seconds).
    statements: list[tuple[str, object, int]] = field(default_factory=list)
    commits: int = 0

    @property
    def auth(self) -> int:
        return sum(1 for stmt, *_ in self.statements if "api_keys" in stmt)

    def reset(self) -> None:
        self.statements, self.commits = [], 0


def _attach(engine) -> Counter:
    c = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _stmt(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        c.statements.append((statement, parameters, c.commits))

    @event.listens_for(engine, "commit")
    def _commit(conn):
        # Commits that commit something: a transaction's COMMIT, or a statement
        # that committed on its own (Database._committed: None, or in
        # autocommit). A Session's commit after statements that ran in
        # autocommit finds the connection idle and sends nothing.
        raw = conn.connection.driver_connection if conn is not None else None
        if raw is None or raw.autocommit or raw.info.transaction_status != 0:  # 0: IDLE
            c.commits += 1

    return c


def _kind(stmt: str) -> str:
    return stmt.lstrip().split(None, 1)[0].upper()


def run() -> list[str]:
    from app import create_app
    from app.api.auth import create_user
    from app.pipeline import STAGES
    from app.pipeline.runner import run_stage

    out = []
    with services() as env:
        app = create_app(env.vars)
        s = app.extensions["bff"]
        with s.db.session() as session:
            _, key = create_user(session, "bench")
        headers = {"Authorization": f"Bearer {key}"}
        client = app.test_client()
        counter = _attach(s.db.engine)
        per: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # phase -> (stmts, commits)
        last_get: list[tuple[str, object]] = []
        for i in range(N):
            counter.reset()
            resp = client.post(
                "/api/generate/from-prompt",
                json={"prompt": f"emerald silk slip dress {i}", "settings": {"provider": "local"}},
                headers=headers,
            )
            assert resp.status_code == 202, resp.get_json()
            gid = resp.get_json()["id"]
            per["submit (POST from-prompt)"].append(
                (len(counter.statements), counter.commits, counter.auth)
            )
            for name in STAGES:
                counter.reset()
                with app.app_context():
                    outcome = run_stage(s.db, s.settings, s.storage, gid, name, task_id=f"t-{name}")
                assert outcome.proceed or name == STAGES[-1], (name, outcome)
                per[f"stage {name}"].append((len(counter.statements), counter.commits, 0))
            counter.reset()
            resp = client.get(f"/api/generate/{gid}", headers=headers)
            assert resp.status_code == 200 and resp.get_json()["status"] == "completed"
            per["status read (GET <id>)"].append(
                (len(counter.statements), counter.commits, counter.auth)
            )
            last_get = [(st, p) for st, p, _ in counter.statements if "api_keys" not in st]

        rows, total_s, total_c = [], 0.0, 0.0
        for phase, samples in per.items():
            stmts = sum(x[0] for x in samples) / len(samples)
            commits = sum(x[1] for x in samples) / len(samples)
            auth = sum(x[2] for x in samples) / len(samples)
            total_s, total_c = total_s + stmts, total_c + commits
            target = "<= 2 commits" if phase.startswith("stage") else ""
            if phase.startswith("status"):
                target = "1 indexed query (+auth)"
            ok = ""
            if phase.startswith("stage"):
                ok = "ok" if commits <= 2 else "OVER"
            elif phase.startswith("status"):
                ok = "ok" if stmts - auth <= 1 else "OVER"
            rows.append([phase, stmts, f"{auth:g}", commits, target, ok])
        rows.append(["total per generation", total_s, "", total_c, "", ""])
        out.append(
            table(
                f"Database cost per generation (PostgreSQL, mean of {N})",
                ["phase", "statements", "of which auth", "commits", "target", ""],
                rows,
            )
        )
        out.append(_explain(s.db.engine, last_get))
    return out


def _explain(engine, statements: list[tuple[str, object]]) -> str:
    rows = []
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        for i, (stmt, params) in enumerate(statements, 1):
            if _kind(stmt) != "SELECT":
                continue
            plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + stmt, params)]
            scans = [
                m.group(0)
                for line in plan
                for m in [
                    re.search(
                        r"(Seq Scan|Index Only Scan|Index Scan|Bitmap \w+ Scan)"
                        r"( using \w+)? on \w+",
                        line,
                    )
                ]
                if m
            ]
            rows.append([i, " ".join(stmt.split())[:60] + "...", "; ".join(scans)])
        conn.rollback()
    return table(
        "Status read: EXPLAIN of each non-auth statement (enable_seqscan=off)",
        ["#", "statement", "scans"],
        rows,
    )
