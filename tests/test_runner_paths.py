"""On PostgreSQL the runner claims and records a stage in one statement each
(``_PG_CLAIM``, ``_PG_RECORD``) and falls back to the general path whenever
that statement finds nothing to do. Both paths must leave the same rows, and
every case the one-statement form declines must still be decided right."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, select

from app import generations as svc
from app.models import Generation, GenerationStage, utcnow
from app.pipeline import STAGE_FUNCS, STAGES, runner
from app.pipeline.context import StageFailed, StageResult
from tests.support.pipeline import claimed, run_all, services, stage


def _new(app, user) -> str:
    with services(app).db.session() as session:
        return svc.create(
            session,
            user_id=user.id,
            mode="prompt",
            settings={"provider": "local"},
            prompt="emerald silk slip dress with a cowl neck",
        ).id


def _rows(app, gen_id: str) -> dict:
    """What a path leaves behind, without what differs by nature (ids, clocks)."""
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        stages = session.scalars(
            select(GenerationStage)
            .where(GenerationStage.generation_id == gen_id)
            .order_by(GenerationStage.position)
        ).all()
        return {
            "status": gen.status,
            "completed": gen.completed_at is not None,
            "updated_after_created": gen.updated_at >= gen.created_at,
            "provider": gen.provider,
            "model": gen.model,
            "pipeline_keys": list(gen.pipeline_data),
            "pipeline_stages": {k: v for k, v in gen.pipeline_data.items() if k in STAGES},
            "stages": [
                (
                    s.name,
                    s.status,
                    s.attempts,
                    s.task_id,
                    s.error,
                    s.started_at is not None,
                    s.finished_at is not None,
                    s.duration_ms is not None and s.duration_ms >= 0,
                )
                for s in stages
            ],
            "outputs": {s.name: s.output for s in stages},
        }


def _deterministic(rows: dict) -> dict:
    # Stage outputs may carry timings or generated keys: compare their shape.
    out = dict(rows)
    out["outputs"] = {k: sorted(v or {}) for k, v in rows["outputs"].items()}
    out["pipeline_stages"] = {k: sorted(v or {}) for k, v in rows["pipeline_stages"].items()}
    return out


def test_both_paths_leave_the_same_rows(pg_app, pg_user, monkeypatch):
    fast = _new(pg_app, pg_user)
    assert all(o.proceed for o in run_all(pg_app, fast)[:-1])
    with monkeypatch.context() as m:
        m.setattr(runner, "ONE_STATEMENT", False)  # the general path, as on SQLite
        general = _new(pg_app, pg_user)
        run_all(pg_app, general)
    a, b = _rows(pg_app, fast), _rows(pg_app, general)
    assert a["status"] == "completed" and a["completed"]
    # what stage functions set on ctx.generation is written (route, generate)
    assert a["provider"] == "local" and a["model"]
    assert a["pipeline_keys"] == b["pipeline_keys"] == list(STAGES)
    assert _deterministic(a) == _deterministic(b)
    # pipeline_data holds exactly each stage's recorded output
    assert a["pipeline_stages"] == {k: v for k, v in a["outputs"].items()}


def _count_statements(app, full: bool = False) -> list[str]:
    seen: list[str] = []

    def on(conn, cursor, statement, *_):  # noqa: ARG001
        seen.append(statement if full else statement.strip().split(None, 1)[0].upper())

    event.listen(services(app).db.engine, "before_cursor_execute", on)
    return seen


def test_a_stage_is_claimed_and_recorded_in_one_statement_each(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "analyze").proceed
    # The claim and the record, each in autocommit (no BEGIN/SET/COMMIT):
    # analyze itself reads nothing.
    assert seen == ["WITH", "WITH"], seen


def test_a_canceled_generation_is_not_claimed(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    with services(pg_app).db.session() as session:
        svc.cancel(session.get(Generation, gen_id))
    assert not stage(pg_app, gen_id, "analyze").proceed
    assert _rows(pg_app, gen_id)["stages"] == []  # nothing ran: no stage rows written


def test_the_first_claim_writes_the_stage_rows_in_its_one_statement(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    assert _rows(pg_app, gen_id)["stages"] == []  # the submit writes the generation only
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "analyze").proceed
    assert seen == ["WITH", "WITH"], seen
    rows = _rows(pg_app, gen_id)["stages"]
    assert [r[:4] for r in rows] == [("analyze", "skipped", 1, "t-analyze")] + [
        (name, "pending", 0, None) for name in STAGES[1:]
    ]
    assert rows[0][5:] == (True, True, True)  # started, finished, duration
    assert stage(pg_app, gen_id, "enhance").proceed


def test_a_second_copy_of_the_first_stage_leaves_it_to_the_first(pg_app, pg_user, monkeypatch):
    gen_id = _new(pg_app, pg_user)
    real, copies = STAGE_FUNCS["analyze"], []

    def analyze(ctx):  # another delivery arrives while this one runs
        s = services(pg_app)
        copies.append(runner.run_stage(s.db, s.settings, s.storage, gen_id, "analyze", "copy-b"))
        return real(ctx)

    monkeypatch.setitem(STAGE_FUNCS, "analyze", analyze)
    assert stage(pg_app, gen_id, "analyze").proceed
    assert not copies[0].proceed
    rows = _rows(pg_app, gen_id)["stages"]
    assert len(rows) == len(STAGES) and rows[0][:4] == ("analyze", "skipped", 1, "t-analyze")


def test_a_retry_from_the_first_stage_claims_its_row_in_one_statement(pg_app, pg_user, monkeypatch):
    gen_id = _new(pg_app, pg_user)
    with monkeypatch.context() as m:

        def broken(ctx):
            raise StageFailed("the sketch could not be read")

        m.setitem(STAGE_FUNCS, "analyze", broken)
        assert not stage(pg_app, gen_id, "analyze").proceed
    with services(pg_app).db.session() as session:
        assert svc.prepare_retry(session.get(Generation, gen_id)) == "analyze"
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "analyze").proceed
    assert seen == ["WITH", "WITH"], seen
    rows = _rows(pg_app, gen_id)["stages"]
    assert len(rows) == len(STAGES) and rows[0][:3] == ("analyze", "skipped", 1)


def test_a_stage_delivered_out_of_order_is_not_claimed(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    assert not stage(pg_app, gen_id, "enhance").proceed
    assert [s[1] for s in _rows(pg_app, gen_id)["stages"]] == ["pending"] * len(STAGES)


def test_a_finished_stage_redelivered_continues_without_running_again(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    stage(pg_app, gen_id, "analyze")
    before = _rows(pg_app, gen_id)
    assert stage(pg_app, gen_id, "analyze").proceed
    assert _rows(pg_app, gen_id)["stages"] == before["stages"]


def test_a_live_running_stage_is_left_to_its_owner(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="owner")
    assert not stage(pg_app, gen_id, "analyze").proceed
    assert _rows(pg_app, gen_id)["stages"][0][1:4] == ("running", 1, "owner")


def test_a_stalled_stage_is_taken_over(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="lost")
    with services(pg_app).db.session() as session:
        session.get(Generation, gen_id).updated_at = utcnow() - timedelta(hours=1)
    assert stage(pg_app, gen_id, "analyze").proceed
    # (analyze skips a prompt-only generation)
    assert _rows(pg_app, gen_id)["stages"][0][1:4] == ("skipped", 2, "t-analyze")


def test_canceled_while_working_keeps_canceled_and_stops(pg_app, pg_user, monkeypatch):
    gen_id = _new(pg_app, pg_user)

    def cancel_meanwhile(ctx):
        # analyze is read-only: what it reads commits on its own
        assert ctx.session.connection().connection.dbapi_connection.autocommit is True
        with services(pg_app).db.session() as session:
            svc.cancel(session.get(Generation, gen_id))
        return StageResult({"seen": True})

    # the cancel commits from another connection while this stage's own
    # transaction has not touched the generation yet
    monkeypatch.setitem(STAGE_FUNCS, "analyze", cancel_meanwhile)
    assert not stage(pg_app, gen_id, "analyze").proceed
    rows = _rows(pg_app, gen_id)
    assert rows["status"] == "canceled" and not rows["completed"]
    assert rows["stages"][0][1] == "completed"
    assert rows["pipeline_stages"] == {"analyze": {"seen": True}}


def test_the_last_stage_completes_the_generation_once(pg_app, pg_user):
    gen_id = _new(pg_app, pg_user)
    outcomes = run_all(pg_app, gen_id)
    assert [o.proceed for o in outcomes] == [True] * (len(STAGES) - 1) + [False]
    rows = _rows(pg_app, gen_id)
    assert rows["status"] == "completed" and rows["completed"]
    # a redelivered last stage changes nothing
    assert not stage(pg_app, gen_id, STAGES[-1]).proceed
    assert _rows(pg_app, gen_id) == rows


def test_general_path_still_serves_sqlite(app, user):
    gen_id = _new(app, user)
    run_all(app, gen_id)
    assert _rows(app, gen_id)["status"] == "completed"


def _route_writing(ctx):
    ctx.generation.provider, ctx.generation.model = "local", "bff-local-v1"
    ctx.generation.cost = Decimal("0.125")
    return StageResult({"provider": "local"})


@pytest.mark.parametrize("one_statement", [True, False])
def test_what_a_stage_assigns_on_its_generation_is_written_by_the_record(
    pg_app, pg_user, monkeypatch, one_statement
):
    """No separate UPDATE: the record statement carries the stage's writes."""
    monkeypatch.setattr(runner, "ONE_STATEMENT", one_statement)
    gen_id = _new(pg_app, pg_user)
    for name in STAGES[:3]:
        assert stage(pg_app, gen_id, name).proceed
    monkeypatch.setitem(STAGE_FUNCS, "route", _route_writing)
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "route").proceed
    if one_statement:
        assert seen == ["WITH", "WITH"], seen  # claim; record, with the stage's writes
    with services(pg_app).db.session() as session:
        gen = session.get(Generation, gen_id)
        assert (gen.provider, gen.model, gen.cost) == ("local", "bff-local-v1", Decimal("0.125"))
        assert gen.pipeline_data["route"] == {"provider": "local"}


def test_a_stage_assigning_a_runner_owned_column_fails_and_writes_nothing(
    pg_app, pg_user, monkeypatch
):
    gen_id = _new(pg_app, pg_user)

    def rogue(ctx):
        ctx.generation.provider = "local"
        ctx.generation.status = "completed"
        return StageResult({})

    monkeypatch.setitem(STAGE_FUNCS, "analyze", rogue)
    assert not stage(pg_app, gen_id, "analyze").proceed
    rows = _rows(pg_app, gen_id)
    assert rows["status"] == "failed" and rows["provider"] is None
    assert "internal error in analyze" in rows["stages"][0][4]


def test_stage_writes_on_the_general_path_sqlite(app, user, monkeypatch):
    gen_id = _new(app, user)
    for name in STAGES[:3]:
        assert stage(app, gen_id, name).proceed
    monkeypatch.setitem(STAGE_FUNCS, "route", _route_writing)
    assert stage(app, gen_id, "route").proceed
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        assert (gen.provider, gen.model, gen.cost) == ("local", "bff-local-v1", Decimal("0.125"))


def test_on_a_worker_connection_a_light_stage_is_two_statements_and_two_commits(pg_app, pg_user):
    """Worker connections default to asynchronous commit: a stage that reads
    nothing (analyze on a prompt) is its claim and its record, each its own
    transaction, with no BEGIN, SET or COMMIT round trips around them."""
    db = services(pg_app).db
    db.relax_by_default()
    db.engine.dispose()  # new connections take the worker default
    gen_id = _new(pg_app, pg_user)
    seen = _count_statements(pg_app)
    commits: list[object] = []
    event.listen(db.engine, "commit", lambda conn: commits.append(conn))
    assert stage(pg_app, gen_id, "analyze").proceed
    assert seen == ["WITH", "WITH"], seen
    assert len(commits) >= 2  # each statement committed (the session's no-op commit too)
    rows = _rows(pg_app, gen_id)
    assert rows["stages"][0][1:4] == ("skipped", 1, "t-analyze")
    assert rows["pipeline_keys"][-1] == "analyze"
    # A durable stage's commit still waits for the WAL flush: its record
    # says so (set_config(..., true): for the transaction it runs in, whose
    # commit follows the setting in effect then), whether it is the whole
    # transaction (generate on the local provider) or not (store: its asset
    # rows), without a SET LOCAL round trip.
    texts = _count_statements(pg_app, full=True)
    for name in STAGES[1:]:
        texts.clear()
        stage(pg_app, gen_id, name)
        words = [t.split(None, 1)[0].upper() for t in texts]
        assert "SET" not in words, (name, words)
        durable = "set_config('synchronous_commit', 'on', true)" in texts[-1]
        assert durable == (name in runner.DURABLE_STAGES), (name, texts[-1])
        if name == "generate":
            assert words == ["WITH", "WITH"], (name, words)
    assert _rows(pg_app, gen_id)["status"] == "completed"


def test_a_setting_made_for_the_statements_own_transaction_is_in_effect_then_only(pg_app):
    """What the durable record relies on: in autocommit, set_config(..., true)
    inside the statement holds for that statement's implicit transaction (so
    its commit is synchronous) and is gone after it."""
    db = services(pg_app).db
    db.relax_by_default()
    db.engine.dispose()
    with db.connection() as conn:
        during = db.fetchone(
            conn,
            f"WITH {runner._DURABLE_CTE.removeprefix(', ')}"
            " SELECT current_setting('synchronous_commit') FROM durable",
            {},
            autocommit=True,
        )
        after = db.fetchone(
            conn, "SELECT current_setting('synchronous_commit')", {}, autocommit=True
        )
    assert (during, after) == (("on",), ("off",))


def test_generate_records_the_provider_outcome_in_one_statement(pg_app, pg_user):
    from app.models import Provider, ProviderOutcome

    gen_id = _new(pg_app, pg_user)
    for name in STAGES[:5]:
        assert stage(pg_app, gen_id, name).proceed
    with services(pg_app).db.session() as session:
        before = session.get(Provider, "local").success_count
        outcomes = session.query(ProviderOutcome).filter_by(provider_id="local").count()
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "generate").proceed
    # claim; record (with the stage's cost), the provider's counters and
    # outcome, and the retention prune when due: one statement
    assert seen == ["WITH", "WITH"], seen
    with services(pg_app).db.session() as session:
        assert session.get(Provider, "local").success_count == before + 1
        assert session.query(ProviderOutcome).filter_by(provider_id="local").count() == (
            outcomes + 1
        )


def test_the_routing_window_reads_only_the_windows_rows(pg_app):
    # Time first in the index (migration 0006): a range scan from the cutoff,
    # never the whole 24 hours of outcomes.
    from sqlalchemy import text

    from app.providers.health import WINDOW_QUERY

    sql = str(WINDOW_QUERY.compile(dialect=services(pg_app).db.engine.dialect))
    with services(pg_app).db.engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, {"cutoff": utcnow()})
        )
    assert "on ix_provider_outcomes_created_provider" in plan, plan  # (bitmap) index scan
    assert "Index Cond: (created_at >=" in plan, plan


def test_a_read_only_stage_reads_without_a_transaction(pg_app, pg_user):
    """persona reads the user's personas: claim, that SELECT and the record,
    each its own transaction (no BEGIN, SET or COMMIT), on any connection."""
    gen_id = _new(pg_app, pg_user)
    for name in STAGES[:2]:
        assert stage(pg_app, gen_id, name).proceed
    seen = _count_statements(pg_app)
    assert stage(pg_app, gen_id, "persona").proceed
    assert seen == ["WITH", "SELECT", "WITH"], seen
    # the connection is back in transactions for whoever uses it next
    seen.clear()
    assert stage(pg_app, gen_id, "route").proceed
    with services(pg_app).db.connection() as conn:
        assert conn.connection.dbapi_connection.autocommit is False


def test_a_read_only_stage_that_adds_rows_fails_and_adds_none(pg_app, pg_user, monkeypatch):
    from app.models import GenerationAsset

    gen_id = _new(pg_app, pg_user)

    def sneaky(ctx):
        ctx.session.add(GenerationAsset(generation_id=ctx.generation.id, position=0))
        return StageResult({})

    monkeypatch.setitem(STAGE_FUNCS, "analyze", sneaky)
    assert not stage(pg_app, gen_id, "analyze").proceed
    rows = _rows(pg_app, gen_id)
    assert rows["status"] == "failed"
    assert "internal error in analyze" in rows["stages"][0][4]
    with services(pg_app).db.session() as session:
        assert session.query(GenerationAsset).filter_by(generation_id=gen_id).count() == 0


def _seen_by_stage(app, gen_id: str, name: str, monkeypatch) -> tuple:
    """The generation's status and updated_at as committed when ``name``'s
    function runs (after its claim, before its record)."""
    seen = []

    def look(ctx):
        with services(app).db.session() as session:
            gen = session.get(Generation, gen_id)
            seen.append((gen.status, gen.updated_at))
        return StageResult({})

    monkeypatch.setitem(STAGE_FUNCS, name, look)
    assert stage(app, gen_id, name).proceed
    return seen[0]


def _set_updated_at(app, gen_id: str, when) -> None:
    with services(app).db.session() as session:
        session.get(Generation, gen_id).updated_at = when


def test_the_claim_renews_a_lease_only_when_it_is_not_fresh(pg_app, pg_user, monkeypatch):
    gen_id = _new(pg_app, pg_user)
    before = utcnow()
    # pending: the claim makes it processing and renews the lease
    status, updated = _seen_by_stage(pg_app, gen_id, "analyze", monkeypatch)
    assert status == "processing" and updated >= before
    # processing, renewed just now by analyze's record: the claim leaves the row alone
    with services(pg_app).db.session() as session:
        recorded = session.get(Generation, gen_id).updated_at
    assert _seen_by_stage(pg_app, gen_id, "enhance", monkeypatch) == ("processing", recorded)
    # a lease older than LEASE_FRESH (the stage waited in the queue): renewed
    stale = utcnow() - runner.LEASE_FRESH - timedelta(seconds=5)
    _set_updated_at(pg_app, gen_id, stale)
    status, updated = _seen_by_stage(pg_app, gen_id, "persona", monkeypatch)
    assert status == "processing" and updated > stale + timedelta(seconds=4)


def test_the_general_path_makes_a_durable_stage_durable_itself(pg_app, pg_user, monkeypatch):
    db = services(pg_app).db
    db.relax_by_default()
    db.engine.dispose()
    monkeypatch.setattr(runner, "ONE_STATEMENT", False)
    gen_id = _new(pg_app, pg_user)
    for name in STAGES[:-1]:
        assert stage(pg_app, gen_id, name).proceed
    texts = _count_statements(pg_app, full=True)
    assert not stage(pg_app, gen_id, "store").proceed
    assert "SET LOCAL synchronous_commit = on" in texts, texts
    assert _rows(pg_app, gen_id)["status"] == "completed"


def test_generate_prunes_old_outcomes_in_its_record_at_most_once_a_minute(pg_app, pg_user):
    from app.models import ProviderOutcome
    from app.providers import health

    with services(pg_app).db.session() as session:
        session.add(
            ProviderOutcome(provider_id="local", ok=True, created_at=utcnow() - timedelta(days=2))
        )
    health._last_prune.clear()

    def old_rows() -> int:
        with services(pg_app).db.session() as session:
            return (
                session.query(ProviderOutcome)
                .filter(ProviderOutcome.created_at < utcnow() - timedelta(days=1))
                .count()
            )

    first, second = _new(pg_app, pg_user), _new(pg_app, pg_user)
    for name in STAGES[:5]:
        assert stage(pg_app, first, name).proceed
        assert stage(pg_app, second, name).proceed
    seen = _count_statements(pg_app, full=True)
    assert stage(pg_app, first, "generate").proceed
    record = seen[-1]
    assert "DELETE FROM provider_outcomes" in record and old_rows() == 0
    with services(pg_app).db.session() as session:
        session.add(
            ProviderOutcome(provider_id="local", ok=True, created_at=utcnow() - timedelta(days=2))
        )
    seen.clear()
    assert stage(pg_app, second, "generate").proceed  # within the minute: no prune
    record = seen[-1]
    assert "DELETE" not in record and old_rows() == 1
