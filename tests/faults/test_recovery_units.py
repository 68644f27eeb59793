"""Regression tests, in-process (SQLite), for the bugs the fault suite found."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError

from app.domain import generations as svc
from app.domain.models import Generation, utcnow
from app.pipeline import lease, maintenance, runner
from app.pipeline.runner import run_stage
from tests.support.pipeline import new_generation, redispatch


def _with_stages(app, user) -> tuple[str, int]:
    """A new generation with its stage rows (as its first claim writes them)."""
    gen_id = new_generation(app, user, stages=svc.new_stages())
    with app.extensions["bff"].db.session() as session:
        return gen_id, session.get(Generation, gen_id).stage("generate").id


def _running_since(app, user, seconds: float) -> str:
    """A generation whose ``enhance`` was claimed by a worker that then died."""
    gen_id, _ = _with_stages(app, user)
    since = utcnow() - timedelta(seconds=seconds)
    with app.extensions["bff"].db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.status, gen.dispatched_at = "processing", since
        gen.stage("analyze").status = "skipped"
        st = gen.stage("enhance")
        st.status, st.attempts, st.task_id, st.started_at = "running", 1, "dead-task", since
    with app.extensions["bff"].db.session() as session:
        session.get(Generation, gen_id).updated_at = since
    return gen_id


def test_a_redispatched_copy_takes_over_the_dead_stage(app, user, sent):
    s = app.extensions["bff"]
    gen_id = _running_since(app, user, 3600)
    assert redispatch(app) == 1
    assert sent == [(gen_id, "enhance")]
    # Re-sending must not renew the lease, or the copy finds the stage "alive"
    # and stops, and nothing but the broker's visibility timeout recovers it.
    outcome = run_stage(s.db, s.settings, s.storage, gen_id, "enhance", task_id="new-task")
    assert outcome.proceed
    with s.db.session() as session:
        st = session.get(Generation, gen_id).stage("enhance")
        assert (st.status, st.attempts, st.task_id) == ("completed", 2, "new-task")


def test_a_copy_still_queued_is_not_sent_again_on_every_tick(app, user, sent):
    s = app.extensions["bff"]
    gen_id = _running_since(app, user, 3600)
    assert redispatch(app) == 1
    assert redispatch(app) == 0
    with s.db.session() as session:  # a stall timeout later, still nobody took it
        session.get(Generation, gen_id).dispatched_at = utcnow() - timedelta(seconds=3600)
    with s.db.session() as session:
        session.get(Generation, gen_id).updated_at = utcnow() - timedelta(seconds=3600)
    assert redispatch(app) == 1
    assert sent == [(gen_id, "enhance")] * 2


def _db_gone() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def test_a_database_outage_mid_stage_is_retried_not_failed(app, user, monkeypatch):
    s, gen_id = app.extensions["bff"], new_generation(app, user)
    real = runner.STAGE_FUNCS["analyze"]

    def db_dies(ctx):
        raise _db_gone()

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", db_dies)
    with pytest.raises(OperationalError):  # up to the task: autoretry_for
        run_stage(s.db, s.settings, s.storage, gen_id, "analyze", task_id="t-1")
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.status == "processing" and gen.error_message is None
        assert gen.stage("analyze").status == "running"
    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", real)
    assert run_stage(s.db, s.settings, s.storage, gen_id, "analyze", task_id="t-1").proceed
    with s.db.session() as session:
        assert session.get(Generation, gen_id).stage("analyze").status == "skipped"


def _generating(app, user) -> tuple[str, int]:
    """A generation whose ``generate`` stage this copy has claimed (a
    checkpoint is only ever taken by a copy running its stage)."""
    gen_id, stage_id = _with_stages(app, user)
    with app.extensions["bff"].db.session() as session:
        session.get(Generation, gen_id).stage("generate").status = "running"
    return gen_id, stage_id


def test_a_checkpoint_waits_out_a_short_database_outage(app, user, monkeypatch):
    s, (gen_id, stage_id) = app.extensions["bff"], _generating(app, user)
    monkeypatch.setattr(lease.time, "sleep", lambda _s: None)
    with s.db.Session() as session:
        failures = iter([_db_gone(), _db_gone()])
        real_commit = session.commit

        def flaky_commit():
            if (exc := next(failures, None)) is not None:
                raise exc
            real_commit()

        monkeypatch.setattr(session, "commit", flaky_commit)
        lease.checkpointer(session, gen_id, stage_id, None)({"predictions": ["p1"]})
    with s.db.session() as session:
        output = session.get(Generation, gen_id).stage("generate").output
    assert output == {"predictions": ["p1"], "checkpoint": True}


def test_a_checkpoint_does_not_retry_other_database_errors(app, user, monkeypatch):
    s, (gen_id, stage_id) = app.extensions["bff"], _generating(app, user)
    with s.db.Session() as session:
        calls, real_commit = [], session.commit

        def bad_commit():
            calls.append(1)
            raise IntegrityError("INSERT", {}, Exception("duplicate"))

        monkeypatch.setattr(session, "commit", bad_commit)
        with pytest.raises(IntegrityError):
            lease.checkpointer(session, gen_id, stage_id, None)({"x": 1})
        monkeypatch.setattr(session, "commit", real_commit)
    assert calls == [1]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (_db_gone(), 503, "service_unavailable"),
        (InterfaceError("SELECT 1", {}, Exception("connection already closed")), 503, None),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), 409, "conflict"),
        (ProgrammingError("SELEC", {}, Exception("syntax error")), 500, "internal_error"),
    ],
)
def test_database_errors_map_to_the_right_status(app, exc, status, code):
    def boom():
        raise exc

    app.add_url_rule("/boom", view_func=boom)
    resp = app.test_client().get("/boom")
    assert resp.status_code == status
    body = resp.get_json()
    assert set(body["error"]) == {"code", "message", "details"}
    assert code is None or body["error"]["code"] == code
    assert (resp.headers.get("Retry-After") is not None) == (status == 503)


def test_after_a_database_outage_live_owners_get_a_stall_timeout_to_resume(
    app, user, sent, monkeypatch
):
    # During an outage no stage can renew its lease, so every running stage
    # looks stalled once the database is back; its owner is merely retrying.
    s = app.extensions["bff"]
    monkeypatch.setattr(maintenance, "_local_outage", {})
    running = _running_since(app, user, 3600)
    maintenance.note_db_outage(s.settings)
    assert redispatch(app) == 0
    monkeypatch.setattr(maintenance, "_local_outage", {"at": 0.0})  # long ago
    assert redispatch(app) == 1
    assert sent == [(running, "enhance")]


def test_what_was_just_paid_for_outlasts_a_database_failover(monkeypatch):
    # A managed database's failover takes 30 s to 2 minutes: a checkpoint or
    # a payment giving up sooner sent the stage to a re-run that paid again.
    clock = [0.0]
    monkeypatch.setattr(lease.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lease.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    class Session:
        def rollback(self) -> None:
            pass

    def down_for(seconds: float):
        def step() -> None:
            if clock[0] < seconds:
                raise _db_gone()
            saved.append(clock[0])

        return step

    saved: list[float] = []
    lease.patiently(Session(), down_for(120.0), "payment")
    assert saved and 120.0 <= saved[0] < 123.0  # looked again within seconds of its return
    with pytest.raises(OperationalError):  # an outage past any failover: the task retries
        lease.patiently(Session(), down_for(3600.0), "payment")
    assert clock[0] < 120.0 + lease.CHECKPOINT_PATIENCE + 3.0
    # ... yet it ends before a prefork task's soft time limit ends the wait
    # itself (as an internal error, failing the job).
    from app.platform.config import Settings
    from app.platform.queue import celery_config

    redis_broker = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6399/0"})  # (not contacted)
    limit = celery_config(redis_broker)["task_soft_time_limit"]
    assert lease.CHECKPOINT_PATIENCE + 60 <= limit  # a minute left for the paid call itself
