"""PostgreSQL: accepted submits inserted by ONE statement, for one request or
for a batch of them (``app.api.submit_batch``).

The statement runs, per row, the checks the database answers (the daily
spend cap, the persona is the user's, the submission rate) and inserts the
generation only if they pass and its Idempotency-Key was not used. Its stage
rows are not written here but by its first stage's claim
(``generations.stage_list``). It commits on its own, durably, once for all
rows (``db.OwnStatement``). A row it did not insert is left to
the caller's ordinary path, which answers why (or replays the key): the
statement decides "insert or not", never the error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .db import Database
from .generations import initial_pipeline_data
from .states import PENDING


@dataclass(frozen=True, slots=True)
class SubmitRow:
    """One validated submit, as the statement inserts it. ``now`` is its
    ``created_at``, ``updated_at`` and ``dispatched_at`` (the chain is sent
    right after the commit; see ``app.maintenance`` for a send that never
    happened) and the time its rate limit and daily cap are counted from."""

    generation_id: str
    user_id: int
    mode: str
    settings: dict[str, Any]
    now: datetime
    prompt: str | None = None
    negative_prompt: str | None = None
    persona_id: str | None = None
    vlt_spec: dict[str, Any] | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


def _submit_sql(rate_limited: bool) -> str:
    # The rows come as ONE json parameter (one json.dumps of the batch in
    # Python; one statement text, so psycopg prepares it once whatever the
    # batch size). ``rank``: a row's place among the same user's rows of this
    # batch, which the statement's snapshot does not see, so that the rate
    # limit holds for several submits of one user in one batch (conservative:
    # a row another check refuses still counts; the ordinary path is exact).
    checks = [
        "(u.daily_spend_cap IS NULL OR u.daily_spend_cap > (SELECT coalesce(sum(x.cost), 0)"
        " FROM generations x WHERE x.user_id = r.user_id"
        " AND x.created_at >= date_trunc('day', r.now, 'UTC')))",
        "(r.persona_id IS NULL OR EXISTS (SELECT 1 FROM personas p"
        " WHERE p.id = r.persona_id AND p.user_id = r.user_id))",
    ]
    if rate_limited:
        checks.append(
            "(SELECT count(*) FROM (SELECT 1 FROM generations x WHERE x.user_id = r.user_id"
            " AND x.created_at >= r.now - make_interval(secs => %(window)s)"
            " LIMIT %(limit)s) recent) + r.rank <= %(limit)s"
        )
    return (
        "WITH r AS (SELECT r.*, row_number() OVER (PARTITION BY r.user_id ORDER BY r.n) AS rank"
        " FROM json_to_recordset(%(rows)s::json) AS r(n int, id varchar, user_id int,"
        " mode varchar, settings json, prompt text, negative_prompt text, persona_id varchar,"
        " pipeline_data json, idempotency_key varchar, request_hash varchar,"
        " webhook_url varchar, now timestamptz)),"
        " g AS (INSERT INTO generations (id, user_id, status, mode, settings, prompt,"
        " negative_prompt, persona_id, cost, pipeline_data, idempotency_key, request_hash,"
        " webhook_url, dispatched_at, created_at, updated_at)"
        f" SELECT r.id, r.user_id, '{PENDING}', r.mode, r.settings, r.prompt,"
        " r.negative_prompt, r.persona_id, 0, r.pipeline_data, r.idempotency_key,"
        " r.request_hash, r.webhook_url, r.now, r.now, r.now"
        f" FROM r JOIN users u ON u.id = r.user_id WHERE {' AND '.join(checks)}"
        # One order of the unique index's entries for every batch: two batches
        # racing on the same keys wait for each other instead of deadlocking.
        " ORDER BY r.user_id, r.idempotency_key"
        " ON CONFLICT ON CONSTRAINT uq_generations_idempotency DO NOTHING RETURNING id)"
        " SELECT id FROM g"
    )


SUBMIT_SQL = {rate_limited: _submit_sql(rate_limited) for rate_limited in (False, True)}
# The statement's parameters and their PostgreSQL types (``db.OwnStatement``).
PARAM_TYPES = {False: {"rows": "json"}, True: {"rows": "json", "limit": "int8", "window": "float8"}}


def insert_many(db: Database, rows: Sequence[SubmitRow], rate_limit: tuple[int, float]) -> set[str]:
    """Insert those of ``rows`` whose checks pass, in one durable autocommit
    statement (on the process's own connection for it: ``db.OwnStatement``);
    returns the ids it inserted. Two rows with the same user and
    Idempotency-Key: at most one goes in (the caller sends only one). Raises
    what the database raises (SQLAlchemy's errors)."""
    limit, window = rate_limit
    doc = json.dumps(
        [
            {
                "n": n,
                "id": r.generation_id,
                "user_id": r.user_id,
                "mode": r.mode,
                "settings": r.settings,
                "prompt": r.prompt,
                "negative_prompt": r.negative_prompt,
                "persona_id": r.persona_id,
                "pipeline_data": initial_pipeline_data(r.vlt_spec),
                "idempotency_key": r.idempotency_key,
                "request_hash": r.request_hash,
                "webhook_url": r.webhook_url,
                "now": r.now.isoformat(),
            }
            for n, r in enumerate(rows)
        ]
    )
    params: dict[str, Any] = {"rows": doc}
    limited = limit > 0
    if limited:
        params |= {"limit": limit, "window": float(window)}
    own = db.own_statement(f"bff_submit_{int(limited)}", SUBMIT_SQL[limited], PARAM_TYPES[limited])
    return set(own.first_column(params))


def insert_submitted(db: Database, row: SubmitRow, rate_limit: tuple[int, float]) -> bool:
    """``insert_many`` of one submit: ``generations.create`` and the submit
    checks that need the database (``quotas.check_submission``, the persona,
    the Idempotency-Key). False when it inserted nothing: a check failed or
    the key was used, and the caller takes the ordinary path to answer why."""
    return row.generation_id in insert_many(db, [row], rate_limit)
