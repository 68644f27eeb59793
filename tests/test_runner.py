"""app.pipeline.runner.run_stage in-process on SQLite (no Celery): claim → work
→ record, failure and retry outcomes, cancellation, idempotency."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from PIL import Image

from app import create_app
from app.domain.models import Generation, GenerationAsset, GenerationStage, utcnow
from app.pipeline import STAGES, maintenance
from app.pipeline.context import (
    StageContext,
    StageFailed,
    StageResult,
    StageTransient,
    StageWaiting,
)
from app.pipeline.runner import STAGE_FUNCS, Outcome
from tests.conftest import make_user
from tests.support.pipeline import (
    load,
    run_all,
    services,
    stage,
    stages_by_name,
    submit_image,
    submit_prompt,
)


def stage_row(app, gen_id: str, name: str) -> GenerationStage:
    with services(app).db.session() as session:
        return session.get(Generation, gen_id).stage(name)


def assets(app, gen_id: str) -> list[GenerationAsset]:
    with services(app).db.session() as session:
        return list(session.get(Generation, gen_id).assets)


def test_prompt_generation_runs_to_completed_with_a_png(app, client, user):
    gen_id = submit_prompt(client, user.headers, size="16:9")
    outcomes = run_all(app, gen_id)
    assert len(outcomes) == len(STAGES)
    assert all(o.retry_in is None for o in outcomes)
    assert outcomes[-1] == Outcome(True)  # nothing follows the last stage

    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert gen["completedAt"] is not None and gen["error"] is None
    stages = stages_by_name(gen)
    assert list(stages) == list(STAGES)
    assert stages["analyze"]["status"] == "skipped"  # from a prompt
    assert stages["persona"]["status"] == "skipped"  # the user has no personas
    for name in ("enhance", "route", "optimize", "generate", "store"):
        assert stages[name]["status"] == "completed", stages[name]
    for s in stages.values():
        assert s["attempts"] == 1
        assert s["startedAt"] and s["finishedAt"] and s["durationMs"] is not None
        assert s["finishedAt"] >= s["startedAt"]
    assert gen["provider"] == "local" and gen["prompt"]["enhanced"] and gen["prompt"]["final"]

    [row] = assets(app, gen_id)
    data = services(app).storage.get(row.r2_key)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    assert img.size == (row.width, row.height)
    assert row.width > row.height  # 16:9 was asked for
    assert row.file_size == len(data) and row.content_type == "image/png"
    assert row.cdn_url == f"http://testserver/cdn/{row.r2_key}"
    assert gen["assets"][0]["url"] == row.cdn_url


def test_image_generation_analyzes_the_upload(app, client, user):
    resp = submit_image(client, user.headers)
    assert resp.status_code == 202, resp.get_json()
    gen_id = resp.get_json()["id"]
    run_all(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert gen["mode"] == "image"
    stages = stages_by_name(gen)
    assert stages["analyze"]["status"] == "completed"
    spec = stages["analyze"]["output"]["spec"]
    assert spec["records"][0]["colors"]["primary"]  # a colour was named from the photo
    assert len(assets(app, gen_id)) == 1


def test_canceled_generation_stops(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[:2])
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    for name in STAGES[2:]:
        assert stage(app, gen_id, name).proceed is False
    gen = load(app, gen_id)
    assert gen["status"] == "canceled"
    stages = stages_by_name(gen)
    assert stages["enhance"]["status"] == "completed"
    assert all(stages[n]["status"] == "pending" and stages[n]["attempts"] == 0 for n in STAGES[2:])
    assert assets(app, gen_id) == []


def test_canceled_while_a_stage_works_keeps_canceled(app, client, user, monkeypatch):
    gen_id = submit_prompt(client, user.headers)

    def cancel_meanwhile(ctx: StageContext) -> StageResult:
        resp = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
        assert resp.status_code == 200
        return StageResult({"done": True})

    monkeypatch.setitem(STAGE_FUNCS, "enhance", cancel_meanwhile)
    outcomes = run_all(app, gen_id)
    assert [o.proceed for o in outcomes] == [True, False]
    gen = load(app, gen_id)
    assert gen["status"] == "canceled"
    assert stages_by_name(gen)["persona"]["status"] == "pending"


def _stored(app, gen_id: str) -> list[str]:
    return [o.key for o in services(app).storage.list("users/", None, 100) if gen_id in o.key]


@pytest.mark.parametrize(
    ("name", "ends"), [("generate", "delete"), ("store", "delete"), ("generate", "cancel")]
)
def test_a_stage_leaves_no_object_of_a_generation_ended_while_it_worked(
    app, client, user, monkeypatch, name, ends
):
    """Deleted (or, for generate's outputs, canceled) while the stage worked:
    what the stage stored is removed, so every object in the bucket has a row."""
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[: STAGES.index(name)])
    real = STAGE_FUNCS[name]

    def meanwhile(ctx: StageContext) -> StageResult:
        path = f"/api/generate/{gen_id}" + ("" if ends == "delete" else "/cancel")
        assert (
            client.open(
                path, method="DELETE" if ends == "delete" else "POST", headers=user.headers
            ).status_code
            < 300
        )
        return real(ctx)  # stores its images after the user ended the job

    monkeypatch.setitem(STAGE_FUNCS, name, meanwhile)
    assert stage(app, gen_id, name).proceed is False
    assert _stored(app, gen_id) == []


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("route", StageFailed("no provider can draw this"), "no provider can draw this"),
        ("persona", ZeroDivisionError(), "internal error in persona: ZeroDivisionError"),
    ],
)
def test_a_failing_stage_fails_the_generation_and_stops(
    app, client, user, monkeypatch, name, error, message
):
    calls, later = [], STAGES[STAGES.index(name) + 1 :]

    def broken(ctx: StageContext) -> StageResult:
        raise error

    def spy(ctx: StageContext) -> StageResult:
        calls.append(ctx.generation.id)
        return StageResult()

    from app.platform import events

    said = []  # the live events: a failed stage's says how long it ran, as a finished one's
    monkeypatch.setattr(events, "stage_changed", lambda _s, _g, *event: said.append(event))
    monkeypatch.setitem(STAGE_FUNCS, name, broken)
    for n in later:
        monkeypatch.setitem(STAGE_FUNCS, n, spy)
    gen_id = submit_prompt(client, user.headers)
    outcomes = run_all(app, gen_id)
    [(_, _, duration)] = [e for e in said if e[:2] == (name, "failed")]
    assert isinstance(duration, int)
    assert outcomes[-1].proceed is False and len(outcomes) == STAGES.index(name) + 1
    assert stage(app, gen_id, later[0]).proceed is False  # so does a stale later message
    assert calls == []
    gen = load(app, gen_id)
    assert gen["status"] == "failed"
    assert gen["error"] == {"stage": name, "message": message, "code": "stage_failed"}
    stages = stages_by_name(gen)
    assert stages[name]["status"] == "failed" and stages[name]["finishedAt"]
    assert all(stages[n]["status"] == "pending" for n in later)


def test_a_database_pool_with_no_connection_free_is_retried_not_failed(
    app, client, user, monkeypatch
):
    """No pooled connection free in time is the database's outage: the task
    retries the stage (autoretry_for), the job does not fail as our crash."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    def busy(ctx: StageContext) -> StageResult:
        raise PoolTimeout("QueuePool limit of size 15 overflow 0 reached")

    monkeypatch.setitem(STAGE_FUNCS, "persona", busy)
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[: STAGES.index("persona")])
    with pytest.raises(PoolTimeout):
        stage(app, gen_id, "persona")
    assert load(app, gen_id)["status"] == "processing"
    assert stage_row(app, gen_id, "persona").status == "running"  # resumed by the retry


@pytest.fixture
def app2(app_config):
    """An app that gives up after two attempts."""
    return create_app({**app_config, "BFF_STAGE_MAX_ATTEMPTS": "2"})


def failing_enhance(app, user, monkeypatch, error: str, retry_after: float) -> tuple[str, list]:
    """A submitted generation, analysed, whose enhance stage always fails with
    ``error`` asking to be retried in ``retry_after`` s; and its calls."""
    calls = []

    def flaky(ctx: StageContext) -> StageResult:
        calls.append(1)
        raise StageTransient(error, retry_after=retry_after)

    monkeypatch.setitem(STAGE_FUNCS, "enhance", flaky)
    gen_id = submit_prompt(app.test_client(), user.headers)
    stage(app, gen_id, "analyze")
    return gen_id, calls


def test_transient_errors_retry_then_give_up(app2, monkeypatch):
    user = make_user(app2, "tess")
    gen_id, calls = failing_enhance(app2, user, monkeypatch, "upstream timed out", 7)

    first = stage(app2, gen_id, "enhance")
    assert first.proceed and first.retry_in is not None and first.retry_in >= 7  # Retry-After
    row = stage_row(app2, gen_id, "enhance")
    assert row.status == "pending" and row.attempts == 1
    assert "attempt 1 failed" in row.error and "upstream timed out" in row.error
    assert load(app2, gen_id)["status"] == "processing"

    last = stage(app2, gen_id, "enhance")
    assert last.proceed is False and last.retry_in is None
    assert len(calls) == 2
    gen = load(app2, gen_id)
    assert gen["status"] == "failed"
    assert gen["error"] == {
        "stage": "enhance",
        "message": "gave up after 2 attempts: upstream timed out",
        "code": "stage_failed",
    }
    assert stages_by_name(gen)["enhance"]["attempts"] == 2


def test_a_retry_later_than_the_stall_timeout_is_waited_for_in_hops(app, client, user, monkeypatch):
    """A provider asking for 90 s (the stall timeout is 30 s): the stage is
    held, its lease renewed each hop, and a run before its time (a re-send,
    an early countdown) waits again instead of spending an attempt."""
    gen_id, calls = failing_enhance(app, user, monkeypatch, "429: slow down", 90)
    first = stage(app, gen_id, "enhance")
    assert first.proceed and first.retry_in == 15  # half the stall timeout
    renewed = load(app, gen_id)["updatedAt"]
    early = stage(app, gen_id, "enhance")
    assert early.proceed and 0 < early.retry_in <= 15
    assert load(app, gen_id)["updatedAt"] > renewed  # the hop renewed the lease
    row = stage_row(app, gen_id, "enhance")
    assert (row.status, row.attempts, len(calls)) == ("pending", 1, 1)
    with services(app).db.session() as session:  # 90 s later
        held = session.get(Generation, gen_id).stage("enhance")
        due = utcnow() - timedelta(seconds=1)
        held.output = {**held.output, "retryAt": due.isoformat()}
    stage(app, gen_id, "enhance")
    row = stage_row(app, gen_id, "enhance")
    assert (row.attempts, len(calls)) == (2, 2)


def test_a_retry_of_the_failed_generation_is_not_held_by_the_old_retry_at(
    app, client, user, monkeypatch
):
    real = STAGE_FUNCS["enhance"]
    gen_id, _ = failing_enhance(app, user, monkeypatch, "429: slow down", 3600)
    assert stage(app, gen_id, "enhance").retry_in == 15  # held for an hour, in hops
    s = services(app)
    with s.db.session() as session:
        session.get(Generation, gen_id).deadline_at = utcnow() - timedelta(seconds=1)
    assert maintenance.expire_overdue(s.db, s.settings) == 1  # timed out while held
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
    monkeypatch.setitem(STAGE_FUNCS, "enhance", real)
    assert stage(app, gen_id, "enhance").retry_in is None  # runs now: the old hold is gone
    assert stage_row(app, gen_id, "enhance").status == "completed"


def test_transient_then_success_counts_attempts(app, client, user, monkeypatch):
    real = STAGE_FUNCS["enhance"]
    calls = []

    def once_flaky(ctx: StageContext) -> StageResult:
        calls.append(1)
        if len(calls) == 1:
            raise StageTransient("hiccup")
        return real(ctx)

    monkeypatch.setitem(STAGE_FUNCS, "enhance", once_flaky)
    gen_id = submit_prompt(client, user.headers)
    stage(app, gen_id, "analyze")
    assert stage(app, gen_id, "enhance").retry_in is not None
    run_all(app, gen_id)
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    enhance = stages_by_name(gen)["enhance"]
    assert enhance["attempts"] == 2 and enhance["error"] is None


def test_waiting_keeps_the_checkpoint_and_is_not_an_attempt(app, client, user, monkeypatch):
    seen = []

    def slow_provider(ctx: StageContext) -> StageResult:
        seen.append(dict(ctx.previous))
        if not ctx.previous:
            ctx.checkpoint({"predictionId": "p-1"})
            raise StageWaiting(2.5, "provider still working")
        return StageResult({"predictionId": ctx.previous["predictionId"]})

    monkeypatch.setitem(STAGE_FUNCS, "optimize", slow_provider)
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[:4])

    out = stage(app, gen_id, "optimize")
    assert out.proceed and out.retry_in == 2.5
    row = stage_row(app, gen_id, "optimize")
    assert row.status == "running" and row.attempts == 1
    assert row.output["predictionId"] == "p-1"
    assert row.output["waiting"] == "provider still working"

    again = stage(app, gen_id, "optimize")  # resuming a wait is not a new attempt
    assert again.proceed and again.retry_in is None
    row = stage_row(app, gen_id, "optimize")
    assert seen[0] == {} and seen[1]["predictionId"] == "p-1"
    assert row.status == "completed" and row.attempts == 1
    assert row.output == {"predictionId": "p-1"}


def test_a_wait_saves_its_state_and_a_copy_taken_over_saves_nothing(app, client, user, monkeypatch):
    """``StageWaiting.state`` (e.g. a reserved rate-limit token) is merged into
    the checkpoint with the wait; a copy that lost the stage while it worked
    stops without writing over the owner's checkpoint."""
    seen = []

    def waits(ctx: StageContext) -> StageResult:
        seen.append(dict(ctx.previous))
        if "token" not in ctx.previous:
            raise StageWaiting(0.5, "waiting for a token", {"token": 42.0})
        return StageResult({"used": ctx.previous["token"]})

    monkeypatch.setitem(STAGE_FUNCS, "optimize", waits)
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id, STAGES[:4])
    assert stage(app, gen_id, "optimize").retry_in == 0.5
    assert stage_row(app, gen_id, "optimize").output["token"] == 42.0
    assert stage(app, gen_id, "optimize").proceed
    assert seen[1]["token"] == 42.0
    assert stage_row(app, gen_id, "optimize").output == {"used": 42.0}

    def taken_over(ctx: StageContext) -> StageResult:
        with services(app).db.session() as session:  # another copy took the stage
            row = session.get(Generation, ctx.generation.id).stage("optimize")
            row.task_id, row.output = "t-other", {"token": 7.0, "checkpoint": True}
        raise StageWaiting(0.5, "waiting for a token", {"token": 99.0})

    monkeypatch.setitem(STAGE_FUNCS, "optimize", taken_over)
    other = submit_prompt(client, user.headers)
    run_all(app, other, STAGES[:4])
    out = stage(app, other, "optimize")
    assert not out.proceed and out.retry_in is None
    assert stage_row(app, other, "optimize").output["token"] == 7.0


def test_running_a_finished_stage_again_is_a_no_op(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    before = load(app, gen_id)
    [asset] = assets(app, gen_id)

    # Redelivered messages: the runner sees the stages are done.
    assert stage(app, gen_id, "store").proceed is False  # final: the chain stops
    after = load(app, gen_id)
    assert after["stages"] == before["stages"]
    assert after["updatedAt"] == before["updatedAt"]

    # The store function itself is idempotent: same key, same single row.
    s = services(app)
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        ctx = StageContext(session, gen, s.settings, s.storage)
        result = STAGE_FUNCS["store"](ctx)
    [again] = assets(app, gen_id)
    assert again.id == asset.id and again.r2_key == asset.r2_key
    assert result.output["assets"][0]["key"] == asset.r2_key


def test_store_rewrites_the_asset_row_an_earlier_attempt_left(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    for name in STAGES[:-1]:
        assert stage(app, gen_id, name).proceed
    with services(app).db.session() as session:  # a crashed attempt's row, stale
        old = dict(r2_key="old", cdn_url="old", file_size=1, width=1, height=1, meta={"old": True})
        stale = GenerationAsset(generation_id=gen_id, position=0, **old)
        session.add(stale)
        session.flush()
        stale_id = stale.id
    stage(app, gen_id, "store")
    [asset] = assets(app, gen_id)
    assert asset.id == stale_id  # feedback on it still points at it
    assert asset.r2_key != "old" and asset.width > 1 and "old" not in asset.meta


def test_unknown_generation_stops(app):
    assert stage(app, "gen_missing", "analyze").proceed is False
