"""Database cost per generation, in-process on PostgreSQL.

Submit through the API (Flask test client), run the seven stages with
``app.pipeline.runner.run_stage`` (what the Celery tasks call), then read the
generation back, plainly and with ``If-None-Match`` (the 304 path). SQLAlchemy
events count, per phase, every statement (``before_cursor_execute``), every
COMMIT sent to the server (``commit``, on a connection inside a transaction)
and every pool checkout (each pings the server first: ``pool_pre_ping``).
The status read's statements are EXPLAINed with sequential scans disabled (a
table of a few rows is always cheaper to scan: the question is whether an
index serves the query at all).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import event

from .harness import services, table

N = 20


@dataclass
class Count:
    statements: list[tuple[str, object]] = field(default_factory=list)
    commits: int = 0
    checkouts: int = 0

    def reset(self) -> None:
        self.statements, self.commits, self.checkouts = [], 0, 0

    def auth(self) -> int:  # the API key's lookup (none while the process caches it)
        return sum(1 for stmt, _ in self.statements if "api_keys" in stmt)

    def kinds(self) -> Counter[str]:
        return Counter(_kind(stmt) for stmt, _ in self.statements)


def _attach(engine) -> Count:
    c = Count()

    @event.listens_for(engine, "before_cursor_execute")
    def _stmt(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        c.statements.append((statement, parameters))

    @event.listens_for(engine, "commit")
    def _commit(conn):
        # A COMMIT reaches the server only from inside a transaction (psycopg
        # status INTRANS); a Session's commit on an idle connection sends nothing.
        if conn.connection.driver_connection.info.transaction_status != 0:  # 0: IDLE
            c.commits += 1

    @event.listens_for(engine.pool, "checkout")
    def _checkout(*_):
        c.checkouts += 1

    return c


def _kind(stmt: str) -> str:
    words = stmt.split()
    kind = words[0].upper()
    if kind == "SELECT" and "FOR UPDATE" in stmt.upper():
        return "SELECT FOR UPDATE"
    return kind


def run() -> list[str]:
    from app import create_app
    from app.api.auth import create_user
    from app.pipeline import STAGES
    from app.pipeline.runner import run_stage

    with services() as env:
        app = create_app(env.vars)
        s = app.extensions["bff"]
        with s.db.session() as session:
            _, key = create_user(session, "bench")
        headers = {"Authorization": f"Bearer {key}"}
        client = app.test_client()
        count = _attach(s.db.engine)
        per: dict[str, list[Count]] = defaultdict(list)
        last_get: list[tuple[str, object]] = []

        def phase(name: str) -> None:  # what happened since the last phase ended
            per[name].append(Count(list(count.statements), count.commits, count.checkouts))
            count.reset()

        for i in range(N):
            count.reset()
            resp = client.post(
                "/api/generate/from-prompt",
                json={"prompt": f"emerald silk slip dress {i}", "settings": {"provider": "local"}},
                headers=headers,
            )
            assert resp.status_code == 202, resp.get_json()
            gid = resp.get_json()["id"]
            phase("submit (POST from-prompt)")
            for name in STAGES:
                with app.app_context():
                    outcome = run_stage(s.db, s.settings, s.storage, gid, name, task_id=f"t-{name}")
                assert outcome.proceed or name == STAGES[-1], (name, outcome)
                phase(f"stage {name}")
            resp = client.get(f"/api/generate/{gid}", headers=headers)
            assert resp.status_code == 200 and resp.get_json()["status"] == "completed"
            last_get = [(st, p) for st, p in count.statements if "api_keys" not in st]
            phase("status read (GET <id>)")
            etag = resp.headers["ETag"]
            resp = client.get(f"/api/generate/{gid}", headers={**headers, "If-None-Match": etag})
            assert resp.status_code == 304, resp.status_code
            phase("status read, If-None-Match (304)")
        return [_table(per), _explain(s.db.engine, last_get)]


def _table(per: dict[str, list[Count]]) -> str:
    rows, total = [], Counter()
    for name, samples in per.items():
        n = len(samples)
        stmts = sum(len(c.statements) for c in samples) / n
        commits = sum(c.commits for c in samples) / n
        checkouts = sum(c.checkouts for c in samples) / n
        auth = sum(c.auth() for c in samples) / n
        kinds = sum((c.kinds() for c in samples), Counter())
        mix = ", ".join(f"{k} {v / n:g}" for k, v in sorted(kinds.items()))
        if not name.startswith("status"):
            total.update({"statements": stmts, "commits": commits, "checkouts": checkouts})
        target, ok = "", ""
        if name.startswith("stage"):
            target, ok = "<= 2 commits", "ok" if commits <= 2 else "OVER"
        elif name.startswith("status"):
            target, ok = "1 indexed query (+auth)", "ok" if stmts - auth <= 1 else "OVER"
        rows.append([name, stmts, mix, commits, checkouts, target, ok])
    rows.append(
        [
            "per generation (submit + stages)",
            total["statements"],
            "",
            total["commits"],
            total["checkouts"],
            "",
            "",
        ]
    )
    return table(
        f"Database cost per generation (PostgreSQL, mean of {N}; a pool checkout is "
        "also a pre-ping round trip)",
        ["phase", "statements", "of which", "COMMITs", "checkouts", "target", ""],
        rows,
    )


def _explain(engine, statements: list[tuple[str, object]]) -> str:
    rows = []
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")  # the planner's statistics, as after autovacuum
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
