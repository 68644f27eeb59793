"""Run one stage of one generation and record it. The Celery tasks call
``run_stage`` and nothing else.

Three short transactions, so no row lock is held while a stage works:
1. claim: lock the generation; stop if it is final (canceled, failed) or the
   stage already finished (idempotent re-delivery); mark the stage running;
2. work: the stage function, in a session of its own;
3. record: lock again; write the output, timings and status in the same
   transaction as the stage's own rows (assets). A generation canceled
   meanwhile keeps its status and the chain stops.

Two commits per stage on the success path (claim; work + record), plus one
per checkpoint. Progress commits do not wait for the WAL flush
(``DURABLE_STAGES``).

The claim and the record are the per-stage cost every generation pays seven
times, so they bypass the ORM: one prebuilt Core SELECT ... FOR UPDATE reads
the generation and its stage rows into ``Snapshot`` objects, the decisions
below change those like model objects (``set_status`` et al. are duck-typed),
and ``_save`` writes back only the attributes that changed, by primary key.
The stage function gets the claim's snapshot of the generation (its column
attributes, as on the model) and an ORM session for its own reads and rows;
the generation columns it assigns (``STAGE_WRITABLE``: route's provider and
model, generate's cost) are written by the record statement.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    case,
    select,
    update,
)
from sqlalchemy.orm import Session

from .. import events, readcache
from ..config import Settings
from ..db import Database, dialect_insert, make_durable
from ..db import unavailable as db_unavailable
from ..models import Generation, GenerationStage, utcnow
from ..providers.health import (
    PG_PRUNE_CTE,
    PG_SUCCESS_CTES,
    RETENTION,
    prune_turn,
    record_outcome,
)
from ..states import (
    COMPLETED,
    FAILED,
    FINAL,
    PROCESSING,
    S_COMPLETED,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    S_SKIPPED,
    STAGE_DONE,
    TERMINAL,
    set_stage_status,
    set_status,
)
from ..storage import Storage
from ..webhooks import record_final
from . import READ_ONLY_STAGES, STAGE_FUNCS, STAGES
from .context import StageContext, StageFailed, StageLeaseLost, StageTransient, StageWaiting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    proceed: bool  # False: stop the chain here
    retry_in: float | None = None  # set: run this stage again after that many seconds

    @classmethod
    def stop(cls) -> Outcome:
        return cls(False)


CONTINUE = Outcome(True)
# Their results must survive a database crash: ``generate`` has paid a
# provider; the last stage sets the final status clients and webhooks see.
# Every other commit here is progress an idempotent re-run re-derives, so it
# does not wait for the WAL flush (``Database.session(durable=False)``).
DURABLE_STAGES = ("generate", STAGES[-1])
CHECKPOINT, WAITING = "checkpoint", "waiting"


_G: Table = Generation.__table__
_S: Table = GenerationStage.__table__


class Snapshot:
    """A row's values as attributes, remembering which ones were assigned."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__["_values"] = values
        self.__dict__["_dirty"] = {}

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._dirty[key] = value


class Locked:
    """A generation locked FOR UPDATE and its stage rows."""

    def __init__(self, gen: Snapshot, stages: dict[str, Snapshot]) -> None:
        self.gen, self.stages = gen, stages

    def stage(self, name: str) -> Snapshot:
        return self.stages[name]


_JSON_GEN_COLS = ("settings", "pipeline_data")
# One round trip: the generation row (locked; its stage rows are not) joined
# to its stages. JSON columns come back on the row of the stage being run only
# (CASE ... END), so each document is decoded once, not once per stage row.
_LOCK = (
    select(
        *(
            case((_S.c.name == bindparam("stage"), c), else_=None).label(c.key)
            if c.key in _JSON_GEN_COLS
            else c
            for c in _G.c
        ),
        *(
            case((_S.c.name == bindparam("stage"), c), else_=None).label(f"s_{c.key}")
            if c.key == "output"
            else c.label(f"s_{c.key}")
            for c in _S.c
        ),
    )
    .select_from(_G.join(_S, _S.c.generation_id == _G.c.id))
    .where(_G.c.id == bindparam("generation_id"))
    .order_by(_S.c.position)
    .with_for_update(of=_G)
)  # built once: compiled once, its cache key memoized


def _lock(conn: Connection, generation_id: str, stage: str) -> Locked | None:
    """Lock the generation and read it with its stages. Only ``stage``'s row
    carries its ``output`` (the others read None)."""
    params = {"generation_id": generation_id, "stage": stage}
    rows = conn.execute(_LOCK, params).all()
    if not rows:
        if not write_stage_rows(conn, generation_id):
            return None
        rows = conn.execute(_LOCK, params).all()
    gen: Snapshot | None = None
    stages: dict[str, Snapshot] = {}
    for r in rows:
        m = r._mapping
        if r.s_name == stage:
            gen = Snapshot({c.key: m[c.key] for c in _G.c})
        stages[r.s_name] = Snapshot({c.key: m[f"s_{c.key}"] for c in _S.c})
    if gen is None:  # no row for this stage: a generation without it is not ours to run
        return None
    return Locked(gen, stages)


_STAGE_ROWS = [
    {"name": name, "position": i, "status": S_PENDING, "attempts": 0}
    for i, name in enumerate(STAGES)
]


def write_stage_rows(conn: Connection, generation_id: str) -> bool:
    """A generation's pending stage rows, written by its first claim (the
    submit writes only the generation: ``generations.stage_list``), under
    its lock. False: there is no such generation, or it has ended (nothing
    will run: a job canceled before it started keeps no stage rows)."""
    found = conn.execute(
        select(_G.c.id).where(_G.c.id == generation_id, _G.c.status.not_in(FINAL)).with_for_update()
    ).first()
    if found is None:
        return False
    conn.execute(
        dialect_insert(conn.dialect.name)(_S).on_conflict_do_nothing(
            index_elements=["generation_id", "name"]
        ),
        [{"generation_id": generation_id, **row} for row in _STAGE_ROWS],
    )
    return True


_UPDATES: dict[tuple[str, frozenset[str]], Any] = {}


def _save(conn: Connection, table: Table, row: Snapshot) -> None:
    """UPDATE the columns assigned on ``row``, by primary key, with a statement
    built once per (table, column set)."""
    if not row._dirty:
        return
    key = (table.name, frozenset(row._dirty))
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = _UPDATES[key] = (
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values({c: bindparam(c) for c in key[1]})
        )
    conn.execute(stmt, {**row._dirty, "_id": row.id})
    row.__dict__["_dirty"] = {}


_GEN_KEYS = tuple(c.key for c in _G.c)
# What a stage function may assign on ``ctx.generation`` (route: provider and
# model; generate: cost): written by the record, in the same statement. The
# rest is the runner's (state, timings, outputs) or fixed at submit.
_RUNNER_OWNED = frozenset(
    {"id", "user_id", "status", "pipeline_data", "created_at", "updated_at", "completed_at"}
)
STAGE_WRITABLE = frozenset(_GEN_KEYS) - _RUNNER_OWNED


def _stage_writes(gen: Snapshot, name: str) -> dict[str, Any]:
    """The generation columns the stage function assigned, checked."""
    writes = dict(gen._dirty)
    if bad := sorted(set(writes) - STAGE_WRITABLE):
        raise RuntimeError(f"stage {name} may not write {', '.join(bad)} of a generation")
    return writes


# PostgreSQL: claim and record in one statement each (below); off = the
# general path only, as on SQLite.
ONE_STATEMENT = True
_FINAL_SQL = ", ".join(f"'{s}'" for s in sorted(FINAL))
_DONE_SQL = ", ".join(f"'{s}'" for s in sorted(STAGE_DONE))

# PostgreSQL: the common claim (a pending stage whose predecessors are done, on
# a live generation) in ONE statement, with the changes the general path below
# makes, but one: the generation row is left alone when it is processing and
# its lease was renewed less than ``LEASE_FRESH`` ago (by the previous stage's
# record, moments before, in a chain that is moving). Its ``updated_at`` is in
# an index, so each write of it is a new index entry in every index of the
# table: this saves one of two such writes per stage; the lease stays within
# ``LEASE_FRESH`` of the claim, against stall timeouts of many seconds.
# The generation is locked first (FOR UPDATE re-checks its status after any
# wait). It returns no row whenever the general path has to decide (retries,
# takeovers, out-of-order messages, final generations): the caller then runs
# that path in the same transaction, nothing having changed.
# Driver SQL (``%(name)s``) for ``Database.fetchone``: rows are plain tuples in
# RETURNING order, as are the record's below.
LEASE_FRESH = timedelta(seconds=1)
_CLAIM_ROW = f"""
        UPDATE generation_stages AS s
        SET status = '{S_RUNNING}', attempts = s.attempts + 1, started_at = %(now)s,
            finished_at = NULL, duration_ms = NULL, task_id = %(task_id)s, error = NULL
        FROM g
        WHERE s.generation_id = g.id AND s.name = %(stage)s AND s.status = '{S_PENDING}'
          AND NOT EXISTS (
              SELECT 1 FROM generation_stages AS e
              WHERE e.generation_id = s.generation_id AND e.position < s.position
                AND e.status NOT IN ({_DONE_SQL}))
        RETURNING s.id, s.attempts, s.output"""
_STAGE_VALUES = ", ".join(f"('{name}', {i})" for i, name in enumerate(STAGES))
# The first stage's claim: as above when the generation has its stage rows
# (a retry from the first stage), else it writes them (the submit writes only
# the generation: ``generations.stage_list``), the claimed one running. The
# two cannot both write: one needs the rows, the other their absence.
_CLAIM_FIRST = """
        SELECT id, attempts, output FROM claimed
        UNION ALL SELECT id, attempts, output FROM written WHERE name = %(stage)s"""
_WRITE_ROWS = f"""
        INSERT INTO generation_stages AS s
            (generation_id, name, position, status, attempts, started_at, task_id)
        SELECT g.id, v.name, v.position,
            CASE WHEN v.name = %(stage)s THEN '{S_RUNNING}' ELSE '{S_PENDING}' END,
            CASE WHEN v.name = %(stage)s THEN 1 ELSE 0 END,
            CASE WHEN v.name = %(stage)s THEN %(now)s END,
            CASE WHEN v.name = %(stage)s THEN %(task_id)s END
        FROM g CROSS JOIN (VALUES {_STAGE_VALUES}) AS v(name, position)
        WHERE NOT EXISTS (SELECT 1 FROM generation_stages AS e WHERE e.generation_id = g.id)
        ON CONFLICT ON CONSTRAINT uq_generation_stage DO NOTHING
        RETURNING s.id, s.attempts, s.output, s.name"""


def _claim_sql(first: bool) -> str:
    rows = (
        f"claimed AS ({_CLAIM_ROW}), written AS ({_WRITE_ROWS}), st AS ({_CLAIM_FIRST})"
        if first
        else f"st AS ({_CLAIM_ROW})"
    )
    gen_cols = ", ".join(
        "'" + PROCESSING + "'"
        if c.name == "status"
        else "coalesce(renewed.updated_at, g.updated_at)"
        if c.name == "updated_at"
        else f"g.{c.name}"
        for c in _G.c
    )
    return f"""
    WITH g AS (
        SELECT * FROM generations
        WHERE id = %(generation_id)s AND status NOT IN ({_FINAL_SQL})
        FOR UPDATE
    ), {rows}, renewed AS (
        UPDATE generations AS gen SET status = '{PROCESSING}', updated_at = %(now)s
        FROM g, st
        WHERE gen.id = g.id
          AND (g.status <> '{PROCESSING}' OR g.updated_at < %(fresh_since)s)
        RETURNING gen.updated_at
    )
    SELECT {gen_cols}, st.id AS s_id, st.attempts AS s_attempts, st.output AS s_output
    FROM g CROSS JOIN st LEFT JOIN renewed ON true
    """


_PG_CLAIM = {name: _claim_sql(first=i == 0) for i, name in enumerate(STAGES)}

# PostgreSQL: the record of a successful stage in ONE statement, as the general
# path does it: the stage (still running) completed or skipped with its output
# and duration; its output merged into pipeline_data (key order kept, values
# verbatim: ``json``, not ``jsonb``); the generation completed if this is the
# last stage and nobody ended it meanwhile. No row: the general path decides.
_PG_RECORD_SQL = f"""
    WITH g AS (
        SELECT id, status FROM generations WHERE id = %(generation_id)s FOR UPDATE
    ), st AS (
        UPDATE generation_stages AS s
        SET status = %(status)s, finished_at = %(now)s, output = CAST(%(output)s AS json),
            duration_ms = CASE WHEN s.started_at IS NULL THEN NULL ELSE
                GREATEST(0, ROUND(EXTRACT(EPOCH FROM (%(now)s - s.started_at)) * 1000)) END
        FROM g
        WHERE s.generation_id = g.id AND s.name = %(stage)s AND s.status = '{S_RUNNING}'
        RETURNING s.duration_ms
    ){{ctes}}
    UPDATE generations AS gen SET
        pipeline_data = (
            SELECT json_object_agg(x.k, x.v ORDER BY x.o) FROM (
                SELECT e.k, e.v, e.o FROM json_each(gen.pipeline_data)
                    WITH ORDINALITY AS e(k, v, o) WHERE e.k <> %(stage)s
                UNION ALL SELECT %(stage)s, CAST(%(output)s AS json), 9223372036854775807
            ) AS x),
        updated_at = %(now)s,{{writes}}
        status = CASE WHEN %(last)s AND g.status NOT IN ({_FINAL_SQL})
            THEN '{COMPLETED}' ELSE gen.status END,
        completed_at = CASE WHEN %(last)s AND g.status NOT IN ({_FINAL_SQL})
            THEN %(now)s ELSE gen.completed_at END
    FROM g, st{{durable}} WHERE gen.id = g.id
    RETURNING g.status AS old_status, st.duration_ms, gen.provider
    """
# The commit of a transaction is synchronous or not by the setting in effect
# when it commits (PostgreSQL's synchronous_commit documentation): set by the
# record of a durable stage for the transaction it runs in (its own, when it
# commits alone, or the stage's), it makes that commit durable on a connection
# that defaults to asynchronous commit, without a SET LOCAL round trip.
_DURABLE_CTE = ", durable AS (SELECT set_config('synchronous_commit', 'on', true))"
_PG_RECORDS: dict[tuple[frozenset[str], bool, bool, bool], str] = {}


def _pg_record(
    columns: frozenset[str], durable: bool, success_of_provider: bool, prune: bool = False
) -> str:
    """``_PG_RECORD_SQL`` also setting the generation columns the stage
    function wrote (parameters ``w_<column>``), durable on commit, recording
    the provider's success (``health.PG_SUCCESS_CTES``) and pruning its old
    outcomes (``health.PG_PRUNE_CTE``); one text per combination."""
    key = (columns, durable, success_of_provider, prune)
    sql = _PG_RECORDS.get(key)
    if sql is None:
        writes = "".join(f" {c} = %(w_{c})s," for c in sorted(columns))
        ctes = (
            (_DURABLE_CTE if durable else "")
            + (PG_SUCCESS_CTES if success_of_provider else "")
            + (PG_PRUNE_CTE if prune else "")
        )
        sql = _PG_RECORDS[key] = (
            _PG_RECORD_SQL.replace("{writes}", writes)
            .replace("{ctes}", ctes)
            .replace("{durable}", ", durable" if durable else "")
        )
    return sql


@dataclass(frozen=True)
class Claim:
    gen: Snapshot  # the generation as committed by the claim
    stage_id: int
    attempt: int
    previous: dict[str, Any]  # what an earlier attempt checkpointed, or {}


def _fast_claim(
    db: Database, conn: Connection, generation_id: str, name: str, task_id: str | None
) -> Claim | None:
    now = utcnow()
    row = db.fetchone(
        conn,
        _PG_CLAIM[name],
        {
            "generation_id": generation_id,
            "stage": name,
            "task_id": task_id,
            "now": now,
            "fresh_since": now - LEASE_FRESH,
        },
        autocommit=True,
    )
    if row is None:
        return None
    n = len(_GEN_KEYS)
    stage_id, attempts, output = row[n:]
    output = output or {}
    return Claim(
        gen=Snapshot(dict(zip(_GEN_KEYS, row[:n], strict=True))),
        stage_id=stage_id,
        attempt=attempts,
        previous=dict(output) if output.get(CHECKPOINT) else {},
    )


def stalled(gen: Any, stage: str, settings: Settings) -> bool:
    """No progress on this generation for longer than the stage may take."""
    last = gen.updated_at if gen.updated_at.tzinfo else gen.updated_at.replace(tzinfo=UTC)
    return (utcnow() - last).total_seconds() > settings.stall_timeout_for(stage)


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server asked."""
    delay = random.uniform(0.5, 1.0) * min(60.0, 2.0**attempt)
    return max(delay, retry_after or 0.0)


def fail(gen: Any, stage: Any, message: str) -> None:
    if stage.status != S_FAILED:
        set_stage_status(stage, S_FAILED)
    stage.error = message
    stage.finished_at = utcnow()
    if gen.status not in FINAL:
        set_status(gen, FAILED)
        gen.error_stage, gen.error_message = stage.name, message


def _save_all(conn: Connection, locked: Locked, *stages: Snapshot) -> None:
    for stage in stages:
        _save(conn, _S, stage)
    _save(conn, _G, locked.gen)


def _final_delivery(session: Session, generation_id: str, webhook_url: str | None) -> str | None:
    """``record_final`` for a transition just written with Core: the ORM copy is
    read in this transaction, so the webhook shows what was written. Without a
    webhook (set at submit, never changed) there is nothing to record or read."""
    if not webhook_url:
        return None
    gen = session.get(Generation, generation_id, populate_existing=True)
    return record_final(session, gen) if gen is not None else None


def _claim(
    conn: Connection, settings: Settings, generation_id: str, name: str, task_id: str | None
) -> Claim | Outcome:
    """Take the stage for this delivery, or say why not (an Outcome)."""
    locked = _lock(conn, generation_id, name)
    if locked is None or locked.gen.status in FINAL:
        return Outcome.stop()
    gen, stage = locked.gen, locked.stage(name)
    if stage.status in STAGE_DONE:
        return CONTINUE
    earlier = STAGES[: STAGES.index(name)]
    if any(locked.stage(s).status not in STAGE_DONE for s in earlier):
        # Out of order (a stale message): the chain for the unfinished stage owns this.
        log.warning("%s: %s delivered before earlier stages finished", generation_id, name)
        return Outcome.stop()
    previous = dict(stage.output or {}) if (stage.output or {}).get(CHECKPOINT) else {}
    own_retry = stage.status == S_RUNNING and task_id is not None and stage.task_id == task_id
    if stage.status == S_RUNNING and not own_retry:
        # Another delivery holds this stage. Its lease is the generation's
        # progress clock: fresh means it is alive, so this copy stops here.
        if not stalled(gen, name, settings):
            log.info("%s: %s is already running elsewhere", generation_id, name)
            return Outcome.stop()
        if stage.attempts >= settings.stage_max_attempts:
            fail(
                gen,
                stage,
                f"{name} made no progress in {stage.attempts} "
                "attempts (its worker was lost each time)",
            )
            _save_all(conn, locked, stage)
            return Outcome.stop()
    resuming_wait = own_retry and previous.get(WAITING)
    set_status(gen, PROCESSING)
    set_stage_status(stage, S_RUNNING)
    gen.updated_at = utcnow()  # progress: renews the lease
    if not resuming_wait:  # waiting for a provider is not a new attempt
        stage.attempts += 1
        stage.started_at = utcnow()
    stage.finished_at, stage.duration_ms = None, None
    stage.task_id, stage.error = task_id, None
    _save_all(conn, locked, stage)
    return Claim(gen, stage.id, stage.attempts, previous)


Recorded = tuple[str, int | None, str | None, bool]


def _fast_record(
    db: Database,
    conn: Connection,
    generation_id: str,
    name: str,
    status: str,
    output: dict[str, Any],
    writes: dict[str, Any],
    alone: bool = False,
    durable: bool = False,
    success_of: str | None = None,
) -> Recorded | None:
    """PostgreSQL: ``_general_record`` in one statement (``_PG_RECORD_SQL``),
    with provider ``success_of``'s success recorded too. ``alone``: ``conn``
    is idle and the statement commits on its own. ``durable``: the
    transaction it runs in commits durably.
    None: nothing written, the general path decides."""
    params = {
        "generation_id": generation_id,
        "stage": name,
        "status": status,
        "output": json.dumps(output),
        "now": utcnow(),
        "last": name == STAGES[-1],
        **{f"w_{c}": v for c, v in writes.items()},
    }
    prune = False
    if success_of:
        params["outcome_provider"] = success_of
        prune = prune_turn(db.engine, success_of, params["now"])
        if prune:
            params["prune_before"] = params["now"] - RETENTION
    sql = _pg_record(frozenset(writes), durable, success_of is not None, prune)
    row = db.fetchone(conn, sql, params, autocommit=alone)
    if row is None:
        return None
    old_status, duration_ms, provider = row
    return old_status, duration_ms, provider, success_of is not None


def _general_record(
    conn: Connection,
    generation_id: str,
    name: str,
    status: str,
    output: dict[str, Any],
    writes: dict[str, Any],
) -> Recorded | None:
    """Write a successful stage's result under the generation's lock, with the
    generation columns the stage function wrote (``writes``): the generation's
    status before (final: someone ended it meanwhile), the stage's duration,
    the generation's provider, and False (no provider outcome recorded here).
    None: it was deleted."""
    now = utcnow()
    locked = _lock(conn, generation_id, name)
    if locked is None:
        return None
    gen, stage = locked.gen, locked.stage(name)
    old_status = gen.status
    set_stage_status(stage, status)
    stage.finished_at, stage.output = now, output
    stage.duration_ms = _elapsed_ms(stage)
    for column, value in writes.items():
        setattr(gen, column, value)
    gen.pipeline_data = {**(gen.pipeline_data or {}), name: output}
    gen.updated_at = now
    if old_status not in FINAL and name == STAGES[-1]:
        set_status(gen, COMPLETED)
    _save_all(conn, locked, stage)
    return old_status, stage.duration_ms, gen.provider, False


def run_stage(
    db: Database,
    settings: Settings,
    storage: Storage,
    generation_id: str,
    name: str,
    task_id: str | None = None,
) -> Outcome:
    # One pooled connection (one checkout and its check) for the claim and the
    # work; the rarer waiting and failure paths take their own.
    with db.connection() as conn:
        return _run_stage(db, conn, settings, storage, generation_id, name, task_id)


def _run_stage(
    db: Database,
    shared: Connection,
    settings: Settings,
    storage: Storage,
    generation_id: str,
    name: str,
    task_id: str | None,
) -> Outcome:
    claim: Claim | Outcome | None = None
    if db.is_postgres and ONE_STATEMENT:
        # One statement is atomic by itself: run it in autocommit, without the
        # BEGIN and COMMIT round trips. (Asynchronous commit where the
        # connection defaults to it: the pipeline workers, Database.relax_by_default.)
        claim = _fast_claim(db, shared, generation_id, name, task_id)
    if claim is None:
        with db.session(durable=False, conn=shared) as session:
            claim = _claim(session.connection(), settings, generation_id, name, task_id)
    if isinstance(claim, Outcome):
        return claim
    gen, attempt, previous = claim.gen, claim.attempt, claim.previous
    events.stage_changed(settings, generation_id, name, S_RUNNING, None)

    error: str | None = None
    retry_in: float | None = None
    try:
        # The connection's commit mode for the work (no SET LOCAL round trip):
        # a durable stage's record makes its transaction durable itself.
        durable = name in DURABLE_STAGES
        with db.session(durable=None, conn=shared) as session:
            # The stage reads the claim's copy of the generation; what it
            # assigns there (``STAGE_WRITABLE``) is written by the record.
            ctx = StageContext(
                session,
                gen,
                settings,
                storage,
                previous=previous,
                checkpoint=_checkpointer(session, claim.stage_id, task_id),
            )
            if db.is_postgres and name in READ_ONLY_STAGES:
                with db.reads_in_autocommit(shared):
                    result = STAGE_FUNCS[name](ctx)
                if session.new or session.dirty or session.deleted:
                    raise RuntimeError(f"stage {name} is read-only but changed rows")
            else:
                result = STAGE_FUNCS[name](ctx)
            session.flush()  # the stage's own rows (assets)
            status = S_SKIPPED if result.skipped else S_COMPLETED
            writes = _stage_writes(gen, name)
            rec = None
            if db.is_postgres and ONE_STATEMENT:
                # No transaction open on the connection (the stage wrote
                # nothing and read in autocommit or not at all, or a checkpoint
                # committed all it did): the record is the whole transaction and
                # commits on its own, no BEGIN, SET LOCAL or COMMIT round trips.
                # Not a final transition with a webhook: its delivery row
                # commits in the same transaction.
                alone = db.idle(shared) and not (name == STAGES[-1] and gen.webhook_url)
                rec = _fast_record(
                    db,
                    shared if alone else session.connection(),
                    generation_id,
                    name,
                    status,
                    result.output,
                    writes,
                    alone=alone,
                    durable=durable,
                    success_of=gen.provider if name == "generate" and gen.provider else None,
                )
            if rec is None:
                conn = session.connection()
                rec = _general_record(conn, generation_id, name, status, result.output, writes)
                if durable:
                    make_durable(session)
            if rec is None:  # deleted while the stage worked
                return Outcome.stop()
            old_status, duration, provider, outcome_recorded = rec
            ended_elsewhere = old_status in FINAL  # e.g. canceled while this stage worked
            completing = not ended_elsewhere and name == STAGES[-1]
            if name == "generate" and provider and not outcome_recorded:
                record_outcome(session, provider, ok=True)
            # e.g. a stalled copy ending after the job did: a changed final generation
            changed_final = old_status in TERMINAL
            # the webhook message commits with the transition
            delivery_id = (
                _final_delivery(session, generation_id, gen.webhook_url) if completing else None
            )
        if changed_final:  # status reads of it may be cached (app/readcache.py)
            readcache.announce(settings.redis_url, generation_id)
        events.stage_changed(settings, generation_id, name, status, duration)
        if ended_elsewhere:  # whoever ended it announced it
            return Outcome.stop()
        if name == STAGES[-1]:
            events.generation_final(
                settings, generation_id, COMPLETED, delivery_id, record_webhook=False
            )
            return Outcome.stop()
        return CONTINUE
    except StageLeaseLost as exc:
        log.warning("%s: %s stopped: %s", generation_id, name, exc)
        return Outcome.stop()
    except StageWaiting as exc:
        with db.session(durable=False) as session:
            conn = session.connection()
            locked = _lock(conn, generation_id, name)
            if locked is None or locked.gen.status in FINAL:
                return Outcome.stop()
            stage = locked.stage(name)
            if task_id is not None and stage.task_id != task_id:
                # Taken over while it waited (as checkpoint()'s fence): the
                # owner's checkpoint (e.g. its reserved token) is not ours.
                log.warning("%s: %s stopped: taken over by %s", generation_id, name, stage.task_id)
                return Outcome.stop()
            stage.output = {
                **(stage.output or {}),
                **exc.state,
                CHECKPOINT: True,
                WAITING: exc.reason,
            }
            locked.gen.updated_at = utcnow()  # still alive: renews the lease
            _save_all(conn, locked, stage)
        return Outcome(True, exc.retry_in)
    except StageFailed as exc:
        error = str(exc)
    except StageTransient as exc:
        error = str(exc)
        if attempt < settings.stage_max_attempts:
            retry_in = backoff(attempt, exc.retry_after)
        else:
            error = f"gave up after {attempt} attempts: {error}"
    except Exception as exc:  # a bug or an unmapped dependency error: fail, visibly
        if db_unavailable(exc):
            # The database went away mid-stage (or while recording it): not the
            # job's fault. Let the task retry (autoretry_for); the re-run resumes
            # from the last checkpoint, so a saved prediction is not paid again.
            raise
        log.exception("%s: stage %s crashed", generation_id, name)
        error = f"internal error in {name}: {type(exc).__name__}"

    with db.session() as session:
        conn = session.connection()
        locked = _lock(conn, generation_id, name)
        if locked is None:
            return Outcome.stop()
        gen, stage = locked.gen, locked.stage(name)
        stage.duration_ms = _elapsed_ms(stage)
        if name == "generate" and gen.provider:
            record_outcome(session, gen.provider, ok=False, error=error)
        if retry_in is not None and gen.status not in FINAL:
            set_stage_status(stage, S_PENDING)
            stage.error = f"attempt {attempt} failed, retrying in {retry_in:.1f}s: {error}"
            gen.updated_at = utcnow()
            _save_all(conn, locked, stage)
            return Outcome(True, retry_in)
        was_final = gen.status in FINAL
        changed_final = gen.status in TERMINAL
        fail(gen, stage, error or "failed")
        _save_all(conn, locked, stage)
        delivery_id = (
            None if was_final else _final_delivery(session, generation_id, gen.webhook_url)
        )
    if changed_final:  # status reads of it may be cached (app/readcache.py)
        readcache.announce(settings.redis_url, generation_id)
    events.stage_changed(settings, generation_id, name, S_FAILED, None)
    if not was_final:
        events.generation_final(settings, generation_id, FAILED, delivery_id, record_webhook=False)
    return Outcome.stop()


def _elapsed_ms(stage: Any) -> int | None:
    if stage.started_at is None:
        return None
    started = stage.started_at
    if started.tzinfo is None:  # SQLite returns naive UTC
        started = started.replace(tzinfo=UTC)
    return max(0, round((utcnow() - started).total_seconds() * 1000))


CHECKPOINT_PATIENCE = 30.0  # seconds a checkpoint waits out a database outage


def _checkpointer(
    session: Session,
    stage_id: int,
    task_id: str | None = None,
    patience: float = CHECKPOINT_PATIENCE,
):
    """Commit partial progress in the stage's own session (one transaction at a
    time, so SQLite never sees two writers from one stage).

    A checkpoint usually records something just paid for (a prediction id), so
    a database outage is waited out here for up to ``patience`` seconds rather
    than lost: a re-run without it would pay again."""

    def checkpoint(state: dict) -> None:
        deadline, delay = time.monotonic() + patience, 0.2
        while True:
            try:
                # Fence: lock the stage row and make sure this copy still owns
                # it. A copy that stalled (e.g. blocked while Redis was down)
                # and was taken over must not go on to pay for anything.
                stage = session.scalars(
                    select(GenerationStage)
                    .where(GenerationStage.id == stage_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                ).one()
                if task_id is not None and stage.task_id != task_id:
                    raise StageLeaseLost(f"{stage.name} was taken over by {stage.task_id}")
                stage.output = {**state, CHECKPOINT: True}
                session.execute(  # progress: renews the lease
                    update(Generation)
                    .where(Generation.id == stage.generation_id)
                    .values(updated_at=utcnow())
                )
                make_durable(session)  # e.g. a paid provider's prediction id: never lose it
                session.commit()
                return
            except StageLeaseLost:
                session.rollback()
                raise
            except Exception as exc:
                session.rollback()
                if not db_unavailable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("checkpoint: database unavailable, retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    return checkpoint
