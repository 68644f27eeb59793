"""Leases and the stall dispatcher: a lost stage is re-run, a live one is
never started twice, and attempts are bounded; the storage sweep of orphans."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.domain import generations as svc
from app.domain.models import Generation, utcnow
from app.pipeline import maintenance, orphans, payments, stops
from app.pipeline.runner import run_stage
from app.providers.base import Canceled
from app.webhooks import WebhookDelivery
from tests.support.pipeline import (
    claimed,
    load,
    new_generation,
    redispatch,
    run_all,
    services,
    stages_by_name,
    submit_prompt,
)
from tests.test_metrics import scrape, value


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
    gen_id = new_generation(app, user)
    claimed(app, gen_id, attempts=1, task_id="task-a")
    outcome = _run(app, gen_id, "analyze", "task-b")
    assert not outcome.proceed
    assert _stage(app, gen_id, "analyze") == ("running", 1, "task-a")


def test_a_stage_lost_too_often_fails_the_generation(app, user):
    gen_id = new_generation(app, user)
    claimed(app, gen_id, attempts=3, task_id="task-c")
    _age(app, gen_id, 3600)
    assert not _run(app, gen_id, "analyze", "task-d").proceed
    with app.extensions["bff"].db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.status == "failed"
        assert gen.error_stage == "analyze" and "no progress in 3 attempts" in gen.error_message


def test_a_parked_stage_whose_countdown_was_lost_resumes_without_a_new_attempt(
    app, user, monkeypatch
):
    """Two transient failures, then a paid prediction it waits on: its
    countdown lost (Redis restarted empty), the re-send resumes the wait."""
    from app.pipeline import runner
    from app.pipeline.context import StageResult

    gen_id = new_generation(app, user)
    claimed(app, gen_id, attempts=3, task_id="task-parked")
    with app.extensions["bff"].db.session() as session:
        st = session.get(Generation, gen_id).stage("analyze")
        st.output = {"predictions": ["p1"], "checkpoint": True, "waiting": "p1 processing"}
    _age(app, gen_id, 3600)
    seen = []
    monkeypatch.setitem(
        runner.STAGE_FUNCS, "analyze", lambda ctx: seen.append(ctx.previous) or StageResult({})
    )
    assert _run(app, gen_id, "analyze", "task-resent").proceed
    assert _stage(app, gen_id, "analyze") == ("completed", 3, "task-resent")
    assert seen[0]["predictions"] == ["p1"]  # resumed: its prediction, not a new one


def test_dispatcher_sends_what_never_reached_the_broker(app, user, sent):
    fresh = new_generation(app, user)
    lost = new_generation(app, user)
    _age(app, lost, 60)
    s = app.extensions["bff"]
    assert redispatch(app) == 1
    assert sent == [(lost, "analyze")]
    with s.db.session() as session:
        assert session.get(Generation, lost).dispatched_at is not None
        assert session.get(Generation, fresh).dispatched_at is None
    # Sent once per stall period, not on every tick.
    assert redispatch(app) == 0


def test_a_copy_still_queued_is_sent_again_at_ever_longer_intervals(app, user, sent):
    """A generation waiting behind a backlog is not lost: its copies are sent
    after 30 s, then 60 s more, then 120 s more, not every 30 s."""
    s = app.extensions["bff"]
    gen_id = new_generation(app, user, dispatched_at=utcnow() - timedelta(seconds=61))
    _age(app, gen_id, 120)  # quiet for 120 s, last sent 61 s ago, after 59 s quiet
    assert redispatch(app) == 1  # 61 s > max(30, 59)
    assert redispatch(app) == 0  # just sent, after 120 s quiet: the next in 120 s
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.dispatched_at = utcnow() - timedelta(seconds=100)  # 100 s later ...
        gen.updated_at = gen.dispatched_at - timedelta(seconds=120)
    assert redispatch(app) == 0  # ... is not yet 120 s
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.dispatched_at = utcnow() - timedelta(seconds=125)
        gen.updated_at = gen.dispatched_at - timedelta(seconds=120)
    assert redispatch(app) == 1 and len(sent) == 2


def test_dispatcher_sends_a_submit_whose_chain_never_left(app, user, sent):
    """A submit writes ``dispatched_at`` with the row and sends the chain after
    the commit; a process that died in between leaves a row that looks sent.
    No worker ever picks it up, so it is sent once the first stage's stall
    timeout has passed (a send that failed clears ``dispatched_at`` instead)."""
    s = app.extensions["bff"]
    timeout = s.settings.stall_timeout
    gen_id = new_generation(app, user, dispatched_at=utcnow() - timedelta(seconds=timeout - 5))
    _age(app, gen_id, timeout - 5)  # could still be waiting in a busy queue
    assert redispatch(app) == 0
    with s.db.session() as session:
        session.get(Generation, gen_id).dispatched_at = utcnow() - timedelta(seconds=timeout + 1)
    _age(app, gen_id, timeout + 1)
    assert redispatch(app) == 1
    assert sent == [(gen_id, "analyze")]


def test_dispatcher_resumes_a_silent_generation_at_its_first_unfinished_stage(app, user, sent):
    gen_id = new_generation(app, user, dispatched_at=utcnow())
    for stage in ("analyze", "enhance", "persona"):
        assert _run(app, gen_id, stage, f"t-{stage}").proceed
    s = app.extensions["bff"]
    _age(app, gen_id, s.settings.stall_timeout - 5)  # quiet, but within the stall timeout
    assert redispatch(app) == 0
    _age(app, gen_id, 3600)
    assert redispatch(app) == 1
    assert sent == [(gen_id, "route")]


def test_dispatcher_leaves_final_generations_alone(app, user, sent):
    gen_id = new_generation(app, user, status="canceled", dispatched_at=utcnow())
    _age(app, gen_id, 3600)
    assert redispatch(app) == 0
    assert sent == []


def test_a_copy_that_was_taken_over_stops_before_paying(app, user, monkeypatch):
    """A stage copy that stalled (say, blocked while Redis was down) and was taken
    over must not go on to pay: the checkpoint before each paid call fences it."""
    from app.pipeline import runner
    from app.pipeline.context import StageResult

    gen_id = new_generation(app, user)
    paid: list[str] = []

    def slow_then_pay(ctx):
        # Meanwhile the dispatcher's copy (task-b) took the stage over.
        with app.extensions["bff"].db.session() as session:
            session.get(Generation, gen_id).stage("analyze").task_id = "task-b"
        ctx.checkpoint({"intent": "create"})  # what generate does before paying
        paid.append("create")
        return StageResult({"done": True})

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", slow_then_pay)
    outcome = _run(app, gen_id, "analyze", "task-a")
    assert not outcome.proceed and paid == []
    status, attempts, task_id = _stage(app, gen_id, "analyze")
    assert (status, task_id) == ("running", "task-b")  # the owner's, untouched


def test_a_copy_that_finds_its_stage_finished_by_another_writes_nothing(app, user, monkeypatch):
    """Its stage function's own writes (rows, the generation's cost) go with
    its result: the copy that finished first recorded them already."""
    from decimal import Decimal

    from app.pipeline import runner
    from app.pipeline.context import StageResult

    gen_id = new_generation(app, user)

    def outrun(ctx):
        ctx.generation.cost = Decimal("0.5")  # as generate and refine add theirs
        with app.extensions["bff"].db.session() as session:  # task-b finished first
            st = session.get(Generation, gen_id).stage("analyze")
            st.status, st.task_id, st.output = "completed", "task-b", {"by": "task-b"}
        return StageResult({"by": "task-a"})

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", outrun)
    assert not _run(app, gen_id, "analyze", "task-a").proceed
    with app.extensions["bff"].db.session() as session:
        gen = session.get(Generation, gen_id)
        assert gen.stage("analyze").output == {"by": "task-b"}
        assert (gen.cost or 0) == 0  # task-a's write went with its result


@pytest.mark.parametrize("ends", ["succeeds", "fails"])
def test_a_copy_whose_running_stage_another_took_records_nothing(app, user, monkeypatch, ends):
    """Taken over (or fenced off by a cancel or a timeout, and taken by the
    next request's copy) while it worked: the stage is still running, but
    another copy's. Its result or failure must not end that copy's work."""
    from app.pipeline import runner
    from app.pipeline.context import StageFailed, StageResult

    gen_id = new_generation(app, user)

    def taken_over(ctx):
        with app.extensions["bff"].db.session() as session:
            session.get(Generation, gen_id).stage("analyze").task_id = "task-b"
        if ends == "fails":
            raise StageFailed("task-a's input was refused")
        return StageResult({"by": "task-a"})

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", taken_over)
    outcome = _run(app, gen_id, "analyze", "task-a")
    assert not outcome.proceed and outcome.error is None and outcome.retry_in is None
    with app.extensions["bff"].db.session() as session:
        gen = session.get(Generation, gen_id)
        stage = gen.stage("analyze")
        assert (stage.status, stage.task_id, stage.error) == ("running", "task-b", None)
        assert gen.status == "processing" and not (stage.output or {}).get("by")


def test_a_stage_canceled_as_it_pays_saves_its_prediction_and_cancels_it(app, user, monkeypatch):
    """A cancel that lands while ``generate`` creates a prediction cannot see
    its id yet: the checkpoint after the create finds the generation canceled,
    saves the id and the runner cancels it; nothing more is paid for."""
    from app.pipeline import runner
    from app.pipeline.context import StageResult

    gen_id = new_generation(app, user)
    paid, canceled = [], []

    def pay_while_canceled(ctx):
        ctx.checkpoint({"intent": "create"})  # before paying: still running
        paid.append("p1")
        with app.extensions["bff"].db.session() as session:  # the cancel lands
            session.get(Generation, gen_id).status = "canceled"
        ctx.checkpoint({"predictions": ["p1"]})  # after paying: the id is kept
        paid.append("more")  # never reached
        return StageResult({"done": True})

    def cancel_remote(settings, gen):
        canceled.extend(gen.stage("analyze").output["predictions"])
        return Canceled()  # none had succeeded

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", pay_while_canceled)
    monkeypatch.setattr(payments, "cancel_remote", cancel_remote)
    assert not _run(app, gen_id, "analyze", "task-a").proceed
    assert paid == ["p1"] and canceled == ["p1"]


def test_the_owner_checkpoints_and_renews_its_lease(app, user, monkeypatch):
    from app.pipeline import runner
    from app.pipeline.context import StageResult

    gen_id = new_generation(app, user)
    seen: list[dict] = []

    def checkpointing(ctx):
        _age(app, gen_id, 3600)
        ctx.checkpoint({"predictions": ["p1"]})
        with app.extensions["bff"].db.session() as session:
            gen = session.get(Generation, gen_id)
            seen.append(dict(gen.stage("analyze").output))
            assert not runner_stalled(gen, app)
        return StageResult({"done": True})

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", checkpointing)
    assert _run(app, gen_id, "analyze", "task-a").proceed
    assert seen[0]["predictions"] == ["p1"] and seen[0]["checkpoint"] is True


def runner_stalled(gen, app) -> bool:
    from app.pipeline.lease import stalled

    return stalled(gen, app.extensions["bff"].settings)


def test_a_generation_past_its_deadline_times_out_and_its_prediction_is_canceled(
    app, user, monkeypatch, generator_tasks
):
    canceled: list[list[str]] = []
    monkeypatch.setattr(
        stops, "cancel_remote", lambda _s, gen: canceled.append(_predictions(gen)) or Canceled()
    )
    s = app.extensions["bff"]
    late = new_generation(
        app,
        user,
        deadline_at=utcnow() - timedelta(seconds=1),
        provider="google-imagen",
        webhook_url="https://hooks.example.com/done",
    )
    on_time = new_generation(app, user, deadline_at=utcnow() + timedelta(seconds=60))
    legacy = new_generation(app, user)  # no deadline: created long ago counts from its creation
    with s.db.session() as session:
        session.get(Generation, legacy).created_at = utcnow() - timedelta(hours=1)
        gen = session.get(Generation, late)
        gen.status, gen.stages = "processing", svc.new_stages()
        for st in gen.stages[:5]:
            st.status = "completed"
        gen.stage("generate").status = "running"
        gen.stage("generate").started_at = utcnow() - timedelta(seconds=10)
        gen.stage("generate").output = {"predictions": ["p-1"], "checkpoint": True}
    assert maintenance.expire_overdue(s.db, s.settings) == 2
    # The stop is owed (legacy had not started: nothing to stop), and made by
    # the task the beat's next look sends, not by the look itself.
    assert canceled == [] and generator_tasks == []
    assert stops.resend_owed(s.db, s.celery) == 1
    assert canceled == [["p-1"]] and generator_tasks == [[1]]
    assert stops.resend_owed(s.db, s.celery) == 0  # made: forgotten
    body = load(app, late)
    assert body["status"] == "failed" and body["error"]["code"] == "timeout"
    assert (
        body["error"]["stage"] == "generate"
        and "timed out after 15 min" in body["error"]["message"]
    )
    assert stages_by_name(body)["generate"]["durationMs"] >= 10_000  # as any failed attempt
    assert stages_by_name(load(app, legacy))["analyze"]["durationMs"] is None  # never started
    with s.db.session() as session:
        assert session.get(Generation, late).error_code == "timeout"
        assert session.get(Generation, legacy).error_stage == "analyze"
        # The webhook says what GET says (it said stage_failed: written before the code).
        hook = session.scalars(select(WebhookDelivery).filter_by(generation_id=late)).one()
        assert json.loads(hook.payload)["error"] == body["error"]
    assert load(app, on_time)["status"] == "pending"
    assert maintenance.expire_overdue(s.db, s.settings) == 0  # once


def _predictions(gen: Generation) -> list[str]:
    return list((gen.stage("generate").output or {}).get("predictions") or [])


def test_a_stage_that_works_past_the_stall_timeout_keeps_its_lease(app_config, monkeypatch):
    """The heartbeat renews the lease while the stage works, so a second copy
    finds it alive however long it takes; once it ends, the beats stop."""
    from app import create_app
    from app.pipeline import runner
    from tests.conftest import make_user

    app = create_app({**app_config, "BFF_STALL_TIMEOUT": "0.6"})  # a beat every 0.2 s
    gen_id = new_generation(app, make_user(app, "slow"))
    release, started = threading.Event(), threading.Event()
    real = runner.STAGE_FUNCS["analyze"]

    def slow(ctx):
        started.set()
        release.wait(10)
        return real(ctx)

    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", slow)
    first = threading.Thread(target=_run, args=(app, gen_id, "analyze", "task-a"))
    first.start()
    started.wait(5)
    time.sleep(1.5)  # well past the stall timeout
    assert not _run(app, gen_id, "analyze", "task-b").proceed  # alive: left to its owner
    release.set()
    first.join(10)
    assert _stage(app, gen_id, "analyze") == ("skipped", 1, "task-a")


# ----------------------------------------------------------- the storage sweep


def _put(app, key: str, age_s: float) -> None:
    storage = services(app).storage
    storage.put(key, b"x", "image/png")
    old = time.time() - age_s
    os.utime(storage._path(key), (old, old))


def _keys(app) -> set[str]:
    return {o.key for o in services(app).storage.list("users/", None, 1000)}


def test_the_sweep_removes_old_objects_without_a_row(app, client, user):
    s, old = services(app), orphans.GRACE.total_seconds() + 60
    done = submit_prompt(client, user.headers)
    run_all(app, done)  # completed: its image has a row
    with s.db.session() as session:
        failed = svc.create(session, user_id=user.id, mode="prompt", settings={}, prompt="x")
        failed.status = "failed"  # a retry may still store what it left
    prefix = f"users/{user.id}/generations"
    _put(app, f"{prefix}/gen_deleted/0.png", old)  # its generation is gone
    _put(app, f"{prefix}/gen_recent/0.png", 5)  # too young: its row may not be committed
    _put(app, f"{prefix}/{done}/9.png", old)  # not recorded by a finished generation
    _put(app, f"{prefix}/{failed.id}/0.png", old)
    before = _keys(app)
    for key in before:
        if done in key:
            os.utime(s.storage._path(key), (time.time() - old,) * 2)

    removed = sum(orphans.sweep(s.db, s.storage, page=2) for _ in range(4))  # wraps around
    assert removed == 2
    assert before - _keys(app) == {f"{prefix}/gen_deleted/0.png", f"{prefix}/{done}/9.png"}
    with s.db.session() as session:
        assert session.get(Generation, done).assets[0].r2_key in _keys(app)
    m = scrape(client)["bff_storage_orphans_removed"]
    assert value(m, "bff_storage_orphans_removed_total") == 2


def test_a_timeout_says_its_length_in_words():
    from app.pipeline.endings import _duration

    assert [_duration(s) for s in (900, 3600, 40, 90, 0.5)] == [
        "15 min",
        "60 min",
        "40 s",
        "90 s",
        "0.5 s",
    ]
