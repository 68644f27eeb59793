"""A generator killed again and again while ``generate`` looks at its paid
prediction: the job neither loses the prediction nor pays for it twice, and
a job that kills its worker at every look still fails within a bound.

A kill is simulated in-process: the look raises a ``BaseException`` (nothing
after it runs in that copy: no record, no wait), then the generation is aged
past the stall timeout, as the dispatcher's re-send finds it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from app.domain import spend
from app.domain.models import Generation, utcnow
from app.pipeline.runner import Outcome, run_stage
from app.providers import replicate
from tests.conftest import on_replicate
from tests.support.pipeline import load, run_through, services, stages_by_name
from tests.test_payment_resume import generating

pytestmark = pytest.mark.usefixtures("generator_tasks")

PRICE = Decimal("0.06")  # google-imagen, one image


@pytest.fixture
def app_config(app_config, fake):
    return on_replicate(app_config, fake)


class Killed(BaseException):
    """SIGKILL mid-run."""


def run(app, gen_id: str, task_id: str, retried: bool = False, stage: str = "generate") -> Outcome:
    s = services(app)
    return run_stage(s.db, s.settings, s.storage, gen_id, stage, task_id, retried)


def killed_while_looking(
    app, monkeypatch, gen_id: str, task_id: str, retried: bool, stage: str = "generate"
) -> Outcome:
    """One copy of ``stage`` whose worker dies as it looks at its
    prediction; then its lease runs out. Returns the copy's outcome when it
    stopped before it looked (nothing was killed)."""

    def die(_client, _pid):
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(replicate, "_read", die)
        try:
            return run(app, gen_id, task_id, retried, stage)
        except Killed:
            pass
    s = services(app)
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.updated_at = utcnow() - timedelta(seconds=s.settings.stall_timeout + 1)
    return None


def money(app, gen_id: str) -> tuple[Decimal, Decimal, int]:
    """The generation's cost and hold, and how many charges it has."""
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        charges = session.scalar(select(func.count()).where(spend.Charge.generation_id == gen_id))
        return gen.cost, gen.cost_held, charges


def generate_stage(app, gen_id: str) -> dict:
    return stages_by_name(load(app, gen_id))["generate"]


def test_kills_while_it_polls_a_paid_prediction_spend_no_attempt(app, user, fake, monkeypatch):
    """Each kill lands as a copy looks again at the saved prediction (after
    a wait): its takeover only resumes that wait. More kills than
    ``BFF_STAGE_MAX_ATTEMPTS`` neither fail the job nor create a second one."""
    gen_id = generating(app, user, fake, 1)  # parked on its prediction: attempt 1
    kills = app.extensions["bff"].settings.stage_max_attempts + 1
    for n in range(1, kills + 1):
        # Its countdown's run (the same task id) is killed as it looks...
        assert killed_while_looking(app, monkeypatch, gen_id, f"t-{n}", retried=True) is None
        # ...and the dispatcher's re-send takes over: it looks, and waits again.
        assert run(app, gen_id, f"t-{n + 1}").retry_in, load(app, gen_id)["error"]
    assert generate_stage(app, gen_id)["attempts"] == 1
    (pid,) = fake.predictions
    fake.predictions[pid].update(latency=0.0, starting_s=0.0)
    assert run(app, gen_id, f"t-{kills + 1}", retried=True).retry_in is None  # its countdown
    run_through(app, gen_id, ["store"])
    gen = load(app, gen_id)
    assert gen["status"] == "completed", gen["error"]
    assert fake.creates == 1 and money(app, gen_id) == (PRICE, 0, 1)


def lost_at_every_look(
    app, monkeypatch, gen_id: str, stage: str = "generate"
) -> tuple[int, Outcome]:
    """Every copy killed as it looks (its countdown's run, then each
    re-send's takeover) until a re-send finds the stage lost too often:
    how many were killed, and that re-send's outcome."""
    for kills in range(10):
        task_id, first = f"t-{kills + 1}", kills == 0
        out = killed_while_looking(app, monkeypatch, gen_id, task_id, first, stage)
        if out is not None:
            return kills, out
    raise AssertionError("the job kept killing its worker")


def test_a_job_that_kills_its_worker_at_every_look_still_fails(app, user, fake, monkeypatch):
    """A crash because of the job (say, at every look) must not loop for
    ever: once its free takeover is spent, each lost copy is an attempt."""
    gen_id = generating(app, user, fake, 1)
    kills, out = lost_at_every_look(app, monkeypatch, gen_id)
    max_attempts = app.extensions["bff"].settings.stage_max_attempts
    assert kills == max_attempts + 1  # one takeover was free: its copy only looked again
    assert not out.proceed and "no progress in" in (out.error or ""), out
    gen = load(app, gen_id)
    assert gen["status"] == "failed" and gen["error"]["stage"] == "generate"
    assert generate_stage(app, gen_id)["attempts"] == max_attempts
    assert fake.creates == 1 and money(app, gen_id) == (0, 0, 0)  # nothing read: unrecorded


def test_a_retry_after_lost_attempts_resumes_the_saved_prediction(app, user, fake, monkeypatch):
    """The generation failed with its prediction still running at Replicate
    (not canceled): ``POST …/retry`` polls that prediction and pays it once;
    it creates nothing."""
    gen_id = generating(app, user, fake, 1)
    assert lost_at_every_look(app, monkeypatch, gen_id)[1].error
    (pid,) = fake.predictions
    assert fake.predictions[pid]["canceled_at"] is None
    fake.predictions[pid].update(latency=0.0, starting_s=0.0)

    resp = app.test_client().post(f"/api/generate/{gen_id}/retry", headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    run_through(app, gen_id, ["generate", "store"], task="r")
    gen = load(app, gen_id)
    assert gen["status"] == "completed" and len(gen["assets"]) == 1, gen["error"]
    assert fake.creates == 1 and money(app, gen_id) == (PRICE, 0, 1)


@pytest.mark.parametrize("saved", [False, True])
def test_a_copy_lost_after_it_saved_anything_spends_an_attempt(app, user, monkeypatch, saved):
    """Only a copy that resumed a wait and saved nothing since (it looked
    again) is taken over for free: one that checkpointed (right before a
    paid call, as after a rate-limit wait) may have paid, so its loss counts."""
    from app.pipeline import runner
    from app.pipeline.context import StageResult
    from tests.support.pipeline import claimed, new_generation

    gen_id = new_generation(app, user)
    claimed(app, gen_id, attempts=1, task_id="t-1")
    with services(app).db.session() as session:
        st = session.get(Generation, gen_id).stage("analyze")
        st.output = {"checkpoint": True, "waiting": "no rate-limit token free"}

    def resumed(ctx):
        if saved:
            ctx.checkpoint({"paidCall": "c1"})  # about to pay
        raise Killed()

    s = services(app)
    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", resumed)
    with pytest.raises(Killed):  # its countdown's run, lost
        run_stage(s.db, s.settings, s.storage, gen_id, "analyze", "t-1", retried=True)
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        gen.updated_at = utcnow() - timedelta(seconds=s.settings.stall_timeout + 1)
    monkeypatch.setitem(runner.STAGE_FUNCS, "analyze", lambda ctx: StageResult({}))
    assert run_stage(s.db, s.settings, s.storage, gen_id, "analyze", "t-2").proceed
    assert stages_by_name(load(app, gen_id))["analyze"]["attempts"] == (2 if saved else 1)


def test_a_late_refine_lost_at_every_look_stops_its_predictions(app, user, fake, monkeypatch):
    """A completed generation's refine has no retry to resume its saved
    predictions: failed for its lost copies, it is owed their stop, as any
    other failure of it, and a refine asked again waits for that stop rather
    than pay for a second prediction while the first runs on."""
    from app.pipeline import stops
    from tests.test_refine_replicate import _refining, _upscales

    gen_id, url = _refining(app, user, fake, latency=30.0)  # its countdown's task: "late"
    with services(app).db.session() as session:
        session.get(Generation, gen_id).stage("refine").task_id = "t-1"
    _, out = lost_at_every_look(app, monkeypatch, gen_id, "refine")
    assert not out.proceed and load(app, gen_id)["status"] == "completed"
    assert stages_by_name(load(app, gen_id))["refine"]["status"] == "failed"
    client, s = app.test_client(), services(app)
    early = client.post(url, json={"upscale": 2}, headers=user.headers)
    assert early.status_code == 409 and "being stopped" in early.json["error"]["message"]
    assert stops.resend_owed(s.db, s.celery) == 1  # the beat sends it; made at once here
    assert [fake.render(p)["status"] for p in _upscales(fake)] == ["canceled"]
    assert client.post(url, json={"upscale": 2}, headers=user.headers).status_code == 202
