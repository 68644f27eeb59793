"""Leases and the stall dispatcher: a lost stage is re-run, a live one is
never started twice, and attempts are bounded."""

from __future__ import annotations

from datetime import timedelta

from app.domain import generations as svc
from app.domain.models import Generation, utcnow
from app.pipeline import maintenance
from app.pipeline.runner import run_stage
from tests.support.pipeline import claimed


def _new(app, user, **changes) -> str:
    s = app.extensions["bff"]
    with s.db.session() as session:
        gen = svc.create(
            session, user_id=user.id, mode="prompt", settings={}, prompt="ivory linen shirt"
        )
        for k, v in changes.items():
            setattr(gen, k, v)
        return gen.id


def _run(app, gen_id, stage, task_id):
    s = app.extensions["bff"]
    return run_stage(s.db, s.settings, s.storage, gen_id, stage, task_id=task_id)


def _age(app, gen_id, seconds):
    with app.extensions["bff"].db.session() as session:
        session.get(Generation, gen_id).updated_at = utcnow() - timedelta(seconds=seconds)


def _stage(app, gen_id, name):
    with app.extensions["bff"].db.session() as session:
        st = session.get(Generation, gen_id).stage(name)
        return st.status, st.attempts, st.task_id


def test_a_live_stage_is_not_started_twice(app, user, monkeypatch):
    gen_id = _new(app, user)
    claimed(app, gen_id, attempts=1, task_id="task-a")
    outcome = _run(app, gen_id, "analyze", "task-b")
    assert not outcome.proceed
    assert _stage(app, gen_id, "analyze") == ("running", 1, "task-a")


def test_a_stalled_stage_is_taken_over_and_counted(app, user):
    gen_id = _new(app, user)
    claimed(app, gen_id, attempts=1, task_id="task-a")
    _age(app, gen_id, 3600)
    outcome = _run(app, gen_id, "analyze", "task-b")
    assert outcome.proceed
    status, attempts, task_id = _stage(app, gen_id, "analyze")
    assert (status, attempts, task_id) == ("skipped", 2, "task-b")


def test_a_stage_lost_too_often_fails_the_generation(app, user):
    gen_id = _new(app, user)
    claimed(app, gen_id, attempts=3, task_id="task-c")
    _age(app, gen_id, 3600)
    assert not _run(app, gen_id, "analyze", "task-d").proceed
    with app.extensions["bff"].db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.status == "failed"
        assert gen.error_stage == "analyze" and "no progress in 3 attempts" in gen.error_message


def test_dispatcher_sends_what_never_reached_the_broker(app, user, sent):
    fresh = _new(app, user)
    lost = _new(app, user)
    _age(app, lost, 60)
    s = app.extensions["bff"]
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert sent == [(lost, "analyze")]
    with s.db.session() as session:
        assert session.get(Generation, lost).dispatched_at is not None
        assert session.get(Generation, fresh).dispatched_at is None
    # Sent once per stall period, not on every tick.
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 0


def test_dispatcher_sends_a_submit_whose_chain_never_left(app, user, sent):
    """A submit writes ``dispatched_at`` with the row and sends the chain after
    the commit; a process that died in between leaves a row that looks sent.
    No worker ever picks it up, so it is sent once the first stage's stall
    timeout has passed (a send that failed clears ``dispatched_at`` instead)."""
    s = app.extensions["bff"]
    gen_id = _new(app, user, dispatched_at=utcnow() - timedelta(seconds=60))
    _age(app, gen_id, 60)  # a minute: could still be waiting in a busy queue
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 0
    timeout = s.settings.stall_timeout_for("analyze")
    with s.db.session() as session:
        session.get(Generation, gen_id).dispatched_at = utcnow() - timedelta(seconds=timeout + 1)
    _age(app, gen_id, timeout + 1)
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert sent == [(gen_id, "analyze")]


def test_dispatcher_resumes_a_silent_generation_at_its_first_unfinished_stage(app, user, sent):
    gen_id = _new(app, user, dispatched_at=utcnow())
    for stage in ("analyze", "enhance", "persona"):
        assert _run(app, gen_id, stage, f"t-{stage}").proceed
    s = app.extensions["bff"]
    _age(app, gen_id, 30)  # quiet, but within route's stall timeout
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 0
    _age(app, gen_id, 3600)
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert sent == [(gen_id, "route")]


def test_dispatcher_leaves_final_generations_alone(app, user, sent):
    gen_id = _new(app, user, status="canceled", dispatched_at=utcnow())
    _age(app, gen_id, 3600)
    s = app.extensions["bff"]
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 0
    assert sent == []


def test_a_copy_that_was_taken_over_stops_before_paying(app, user, monkeypatch):
    """A stage copy that stalled (say, blocked while Redis was down) and was taken
    over must not go on to pay: the checkpoint before each paid call fences it."""
    import app.pipeline as pipeline
    from app.pipeline.context import StageResult

    gen_id = _new(app, user)
    paid: list[str] = []

    def slow_then_pay(ctx):
        # Meanwhile the dispatcher's copy (task-b) took the stage over.
        with app.extensions["bff"].db.session() as session:
            session.get(Generation, gen_id).stage("analyze").task_id = "task-b"
        ctx.checkpoint({"intent": "create"})  # what generate does before paying
        paid.append("create")
        return StageResult({"done": True})

    monkeypatch.setitem(pipeline.STAGE_FUNCS, "analyze", slow_then_pay)
    outcome = _run(app, gen_id, "analyze", "task-a")
    assert not outcome.proceed and paid == []
    status, attempts, task_id = _stage(app, gen_id, "analyze")
    assert (status, task_id) == ("running", "task-b")  # the owner's, untouched


def test_the_owner_checkpoints_and_renews_its_lease(app, user, monkeypatch):
    import app.pipeline as pipeline
    from app.pipeline.context import StageResult

    gen_id = _new(app, user)
    seen: list[dict] = []

    def checkpointing(ctx):
        _age(app, gen_id, 3600)
        ctx.checkpoint({"predictions": ["p1"]})
        with app.extensions["bff"].db.session() as session:
            gen = session.get(Generation, gen_id)
            seen.append(dict(gen.stage("analyze").output))
            assert not runner_stalled(gen, app)
        return StageResult({"done": True})

    monkeypatch.setitem(pipeline.STAGE_FUNCS, "analyze", checkpointing)
    assert _run(app, gen_id, "analyze", "task-a").proceed
    assert seen[0]["predictions"] == ["p1"] and seen[0]["checkpoint"] is True


def runner_stalled(gen, app) -> bool:
    from app.pipeline.lease import stalled

    return stalled(gen, "analyze", app.extensions["bff"].settings)
