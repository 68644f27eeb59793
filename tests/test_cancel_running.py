"""A canceled generation shows no stage running for ever: a stage parked on
a provider when the cancel comes, or whose copy stops at its checkpoint
because of it, is failed ("canceled while running"), its predictions
canceled. Runs the real ``replicate`` SDK against the fake."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.domain.generations import cancel
from app.domain.models import Generation
from app.pipeline import ALL_STAGES, payments, stops
from app.providers import replicate
from app.providers.replicate import ReplicateModel
from tests.conftest import on_replicate
from tests.support.pipeline import (
    load,
    paying,
    run_through,
    services,
    stage,
    stages_by_name,
    submit_prompt,
)

# A stopped job's predictions are canceled by a task the generator runs.
pytestmark = pytest.mark.usefixtures("generator_tasks")


@pytest.fixture
def app_config(app_config, fake):
    return on_replicate(app_config, fake)


def canceled_generate(gen: dict) -> dict:
    assert gen["status"] == "canceled"
    stage = stages_by_name(gen)["generate"]
    assert (stage["status"], stage["error"]) == ("failed", "canceled while running"), stage
    assert stage["finishedAt"] and stage["durationMs"] is not None
    return stage


def test_a_stage_parked_on_a_provider_is_failed_by_the_cancel(app, client, user, fake):
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)  # parked on its prediction
    resp = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
    assert resp.status_code == 200
    canceled_generate(resp.get_json())  # at once, in the cancel's own answer
    assert not stage(app, gen_id, "generate").proceed  # its countdown's run stops
    canceled_generate(load(app, gen_id))
    [pid] = fake.predictions
    assert fake.render(pid)["status"] == "canceled"


def test_a_copy_stopped_at_its_checkpoint_by_the_cancel_fails_its_stage(
    app, client, user, fake, monkeypatch
):
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 30.0
    create = ReplicateModel._create

    def create_as_the_cancel_comes(self, request, fields):
        prediction = create(self, request, fields)
        with services(app).db.session() as session:  # the cancel, as the API makes it
            cancel(session.get(Generation, gen_id))
        return prediction

    monkeypatch.setattr(ReplicateModel, "_create", create_as_the_cancel_comes)
    out = stage(app, gen_id, "generate")
    assert not out.proceed and out.retry_in is None
    canceled_generate(load(app, gen_id))
    [pid] = fake.predictions
    assert fake.render(pid)["status"] == "canceled"  # what it paid for is stopped


def test_a_copy_that_finds_its_job_canceled_as_it_waits_again_fails_its_stage(
    app, client, user, fake, monkeypatch
):
    """Resumed from its countdown (the parked mark cleared), it looks at its
    prediction, still running, as the cancel commits: it must not just stop."""
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)  # parked on its prediction
    look = replicate.look_once

    def look_as_the_cancel_comes(*args):
        try:
            return look(*args)  # still processing: it will wait again
        finally:
            with services(app).db.session() as session:
                cancel(session.get(Generation, gen_id))

    monkeypatch.setattr(replicate, "look_once", look_as_the_cancel_comes)
    out = stage(app, gen_id, "generate")  # its countdown's run
    assert not out.proceed and out.retry_in is None
    canceled_generate(load(app, gen_id))


def test_a_stage_whose_worker_died_as_the_cancel_came_is_failed_by_the_beat(app, client, user):
    """No copy will ever end it: once the generation has been silent a stall
    timeout, the maintenance beat fails it; a copy still alive keeps it."""
    from datetime import timedelta

    from app.domain.models import utcnow
    from app.pipeline.maintenance import end_abandoned_stages
    from tests.support.pipeline import claimed

    dead, alive = (submit_prompt(client, user.headers, "red dress") for _ in range(2))
    for gen_id in (dead, alive):
        claimed(app, gen_id, attempts=1, task_id=f"t-{gen_id}", name="analyze")
        resp = client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers)
        assert resp.status_code == 200
    s = services(app)
    assert end_abandoned_stages(s.db, s.settings) == 0  # both just canceled
    with s.db.session() as session:  # the dead one's worker has been silent since
        gen = session.get(Generation, dead)
        gen.updated_at = utcnow() - timedelta(seconds=s.settings.stall_timeout + 1)
    assert end_abandoned_stages(s.db, s.settings) == 1
    stage = stages_by_name(load(app, dead))["analyze"]
    assert (stage["status"], stage["error"]) == ("failed", "canceled while running")
    assert stages_by_name(load(app, alive))["analyze"]["status"] == "running"
    assert end_abandoned_stages(s.db, s.settings) == 0  # nothing left to end


def test_the_cancel_answers_without_waiting_on_replicate(app, client, user, fake, monkeypatch):
    """Each prediction's cancel waits on Replicate (seconds when it is slow,
    for each of a batch's predictions): the request owes the stop (a row, in
    its transaction) and sends it to the generator, and answers at once."""
    from app.providers import cancel as remote

    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)
    sent, real = [], remote.cancel_predictions
    celery = services(app).celery
    monkeypatch.setattr(celery, "send_task", lambda name, args, **_: sent.append((name, args)))
    monkeypatch.setattr(remote, "cancel_predictions", lambda *a: pytest.fail("in the request"))
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    [(name, (stop_id,))] = sent
    [pid] = fake.predictions
    assert name == "providers.stop_paid_work" and fake.render(pid)["status"] != "canceled"
    monkeypatch.setattr(remote, "cancel_predictions", real)  # the generator runs it
    with app.app_context():
        celery.tasks[name].apply(args=(stop_id,), throw=True)
    assert fake.render(pid)["status"] == "canceled"
    with services(app).db.session() as session:
        assert session.get(stops.ProviderStop, stop_id) is None  # made: forgotten


def test_a_stop_whose_message_was_lost_is_sent_again_by_the_beat(
    app, client, user, fake, monkeypatch
):
    """The broker refused the message, or lost it (Redis restarted empty):
    the stop is a row, and the beat sends it again a minute on."""
    from datetime import timedelta

    from app.domain.models import utcnow

    s = services(app)
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)
    real = s.celery.send_task
    monkeypatch.setattr(s.celery, "send_task", lambda *a, **k: None)  # accepted, then lost
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    [pid] = fake.predictions
    assert fake.render(pid)["status"] != "canceled"
    monkeypatch.setattr(s.celery, "send_task", real)
    assert stops.resend_owed(s.db, s.celery) == 0  # sent a moment ago: not yet
    monkeypatch.setattr(stops, "utcnow", lambda: utcnow() + timedelta(minutes=2))
    assert stops.resend_owed(s.db, s.celery) == 1
    assert fake.render(pid)["status"] == "canceled"


def test_a_stop_the_broker_refused_goes_at_the_beats_next_pass(
    app, client, user, fake, monkeypatch
):
    """Redis down at the cancel: the predictions are paid for while they run,
    so the stop is not left for the minute a lost message waits."""
    s = services(app)
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)
    real = s.celery.send_task

    def refused(*args, **kwargs):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(s.celery, "send_task", refused)
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    [pid] = fake.predictions
    assert fake.render(pid)["status"] != "canceled"
    monkeypatch.setattr(s.celery, "send_task", real)
    assert stops.resend_owed(s.db, s.celery) == 1  # at once, not a minute on
    assert fake.render(pid)["status"] == "canceled"


def test_a_stop_that_cannot_record_its_payment_stays_owed(app, client, user, fake, monkeypatch):
    """A database outage past the payment's patience is raised for the task
    to retry: the stop is not forgotten with a payment unrecorded."""
    from sqlalchemy.exc import OperationalError

    from app.domain import spend

    s = services(app)
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)
    [pid] = fake.predictions
    fake.predictions[pid].update(latency=0.0, starting_s=0.0)  # made: the cancel comes too late
    monkeypatch.setattr(payments, "patiently", lambda session, step, what: step())

    def db_down(*_a):
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(spend, "pay_too_late", db_down)
    monkeypatch.setattr(s.celery, "send_task", lambda *a, **k: None)
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    with s.db.session() as session:
        [stop_id] = session.scalars(select(stops.ProviderStop.id)).all()
    with pytest.raises(OperationalError):
        stops.make(s.db, s.settings, stop_id)
    with s.db.session() as session:
        assert session.get(stops.ProviderStop, stop_id) is not None  # still owed


def test_a_stop_replicate_does_not_answer_is_asked_again(app, client, user, fake, monkeypatch):
    """Replicate answered the cancel 503: nothing was stopped, yet the stop was
    forgotten, and the prediction ran on, billed, its success never recorded."""
    from tests.fakes.replicate import problem

    s = services(app)
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    paying(app, fake, gen_id)
    real = fake.cancel
    monkeypatch.setattr(fake, "cancel", lambda pid: problem(503, "Unavailable", "try later"))
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    [pid] = fake.predictions
    assert fake.render(pid)["status"] != "canceled"
    with s.db.session() as session:
        [stop_id] = session.scalars(select(stops.ProviderStop.id)).all()  # still owed
    monkeypatch.setattr(fake, "cancel", real)  # Replicate answers again
    stops.make(s.db, s.settings, stop_id)  # (as the beat's re-send would)
    assert fake.render(pid)["status"] == "canceled"
    with s.db.session() as session:
        assert session.get(stops.ProviderStop, stop_id) is None
