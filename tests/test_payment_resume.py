"""A stage that paid and then could not finish (its record hit a database
outage, a download failed) runs again: it records the payment once, and lets
go of the hold it took again on its way, for Replicate predictions read again
and for DALL-E 3 images saved from the paid call (the real SDKs, against the
fakes)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app.domain import spend
from app.domain.models import Generation
from app.pipeline import ALL_STAGES, runner
from app.pipeline import refine as refine_stage
from app.pipeline.context import StageTransient
from app.providers.refiners import UPSCALER
from tests.conftest import on_replicate
from tests.fakes.openai_images import FakeOpenAIImages
from tests.support.pipeline import load, run_through, services, submit_prompt

# A stopped job's predictions are canceled by a task the generator runs.
pytestmark = pytest.mark.usefixtures("generator_tasks")


KEY = "sk-unit-test"
PRICE = {"google-imagen": Decimal("0.06"), "openai-dalle3": Decimal("0.04")}


@pytest.fixture
def openai_fake():
    with FakeOpenAIImages(key=KEY) as fake:
        yield fake


@pytest.fixture
def app_config(app_config, fake, openai_fake):
    openai = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": openai_fake.url + "/v1"}
    return {**on_replicate(app_config, fake), **openai}


def money(app, gen_id: str) -> tuple[Decimal, Decimal, int]:
    """The generation's cost and hold, and how many charges it has."""
    with services(app).db.session() as session:
        gen = session.get(Generation, gen_id)
        charges = session.scalar(select(func.count()).where(spend.Charge.generation_id == gen_id))
        return gen.cost, gen.cost_held, charges


@pytest.mark.parametrize("provider", ["google-imagen", "openai-dalle3"])
def test_a_generate_resumed_after_its_record_failed_pays_once(
    app, user, fake, openai_fake, monkeypatch, provider
):
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider=provider)
    run_through(app, gen_id, ALL_STAGES[:5])
    real, failed = runner.record, []

    def record(session, ctx, name, *args, **kwargs):
        if name == "generate" and not failed:  # the database went away as it recorded
            failed.append(name)
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return real(session, ctx, name, *args, **kwargs)

    monkeypatch.setattr(runner, "record", record)
    with pytest.raises(OperationalError):
        run_through(app, gen_id, ["generate"])
    run_through(app, gen_id, ["generate"])  # Celery's autoretry: the same task again
    assert load(app, gen_id)["stages"][5]["status"] == "completed"
    calls = fake.creates if provider == "google-imagen" else openai_fake.calls("dall-e-3")
    assert calls == 1  # the provider was paid once
    assert money(app, gen_id) == (PRICE[provider], 0, 1)


def test_a_refine_whose_download_failed_after_paying_pays_once(app, user, fake, monkeypatch):
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="google-imagen", upscale=2
    )
    real, failed = refine_stage.download, []

    def download(settings, url, *args, **kwargs):
        if not failed:
            failed.append(url)
            raise StageTransient("output download failed: ConnectionError")
        return real(settings, url, *args, **kwargs)

    monkeypatch.setattr(refine_stage, "download", download)
    run_through(app, gen_id)
    assert load(app, gen_id)["status"] == "completed" and failed
    assert fake.creates == 2  # the image and its upscale, each once
    assert money(app, gen_id) == (PRICE["google-imagen"] + Decimal(str(UPSCALER.price)), 0, 2)


def test_a_database_outage_as_it_records_the_payment_is_waited_out(app, user, monkeypatch):
    """The provider has the money: a brief outage must not lose the payment
    nor send the stage round again (gpt-image-1 would pay again)."""
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    real, failed = spend.pay, []

    def pay(session, *args, **kwargs):
        if not failed:
            failed.append(1)
            session.execute(select(1))  # a transaction begun, as a real outage finds it
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(spend, "pay", pay)
    run_through(app, gen_id, ["generate"])  # no OperationalError reaches the task
    assert failed and load(app, gen_id)["stages"][5]["attempts"] == 1
    assert money(app, gen_id) == (PRICE["google-imagen"], 0, 1)


def generating(app, user, fake, count: int) -> str:
    """A Replicate job of ``count`` images, its stage parked on their
    predictions (each takes a minute, until a test says otherwise)."""
    from app.pipeline.runner import run_stage

    s = services(app)
    gen_id = submit_prompt(
        app.test_client(), user.headers, "red dress", provider="google-imagen", count=count
    )
    run_through(app, gen_id, ALL_STAGES[:5])
    fake.latency = 60.0
    assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1").retry_in
    return gen_id


def two_images_one_read(app, user, fake) -> tuple[str, str, str]:
    """A two-image Replicate job whose stage has read its first prediction
    succeeded while the second still runs (parked on it)."""
    from app.pipeline.runner import run_stage

    s, gen_id = services(app), generating(app, user, fake, 2)
    first, second = fake.predictions
    fake.predictions[first].update(latency=0.0, starting_s=0.0)
    assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", retried=True).retry_in
    return gen_id, first, second


def test_an_image_paid_before_its_job_was_canceled_counts(app, user, fake):
    """The cancel came while the second image was made: the first was paid
    for all the same, and today's spend (the cap) says so."""
    gen_id, _, second = two_images_one_read(app, user, fake)
    client = app.test_client()
    assert client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
    assert fake.render(second)["status"] == "canceled"
    assert money(app, gen_id) == (PRICE["google-imagen"], 0, 1)
    with services(app).db.session() as session:
        assert Decimal(str(spend.spent_today(session, user.id))) == PRICE["google-imagen"]


def test_an_image_paid_before_another_failed_counts(app, user, fake):
    """One image blocked by the safety filter fails the job; the other was paid."""
    from app.pipeline.runner import run_stage

    s = services(app)
    gen_id, _, second = two_images_one_read(app, user, fake)
    fake.predictions[second].update(latency=0.0, starting_s=0.0, outcome="safety")
    out = run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", retried=True)
    assert out.error and load(app, gen_id)["status"] == "failed"
    assert money(app, gen_id) == (PRICE["google-imagen"], 0, 1)


@pytest.mark.parametrize("how", ["canceled", "timed out", "deleted"])
def test_an_image_made_before_the_cancel_reached_replicate_counts(app, user, fake, how):
    """The prediction succeeded after the stage's last look: the cancel finds
    it paid for (too late to stop) and the ledger records it."""
    from datetime import timedelta

    from app.domain.models import utcnow
    from app.pipeline import maintenance, stops

    s, client, gen_id = services(app), app.test_client(), generating(app, user, fake, 1)
    [pid] = fake.predictions
    fake.predictions[pid].update(latency=0.0, starting_s=0.0)  # done; the stage has not looked
    if how == "canceled":
        assert (
            client.post(f"/api/generate/{gen_id}/cancel", headers=user.headers).status_code == 200
        )
    elif how == "deleted":
        assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204
    else:
        with s.db.session() as session:
            session.get(Generation, gen_id).deadline_at = utcnow() - timedelta(seconds=1)
        assert maintenance.expire_overdue(s.db, s.settings) == 1
        assert stops.resend_owed(s.db, s.celery) == 1  # the beat sends the stop it owes
    assert fake.counters["cancel"] == 1 and fake.render(pid)["status"] == "succeeded"
    with s.db.session() as session:
        charged = session.scalar(select(func.sum(spend.Charge.amount)).where(
            spend.Charge.generation_id == gen_id))  # fmt: skip
        assert charged == PRICE["google-imagen"]
        assert Decimal(str(spend.spent_today(session, user.id))) == PRICE["google-imagen"]
    if how != "deleted":
        assert money(app, gen_id) == (PRICE["google-imagen"], 0, 1)


def test_a_job_failed_for_good_stops_the_images_still_being_made(app, user, fake):
    """One image blocked by the safety filter fails the job: the other, still
    running, would be billed for nothing, so it is canceled."""
    from app.pipeline.runner import run_stage

    s, gen_id = services(app), generating(app, user, fake, 2)
    first, second = fake.predictions
    fake.predictions[second].update(latency=0.0, starting_s=0.0, outcome="safety")
    out = run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", retried=True)
    assert out.error and load(app, gen_id)["status"] == "failed"
    assert fake.render(first)["status"] == "canceled"
    assert money(app, gen_id) == (0, 0, 0)


def test_a_stage_that_paid_for_all_its_images_at_once_is_not_paid_again_per_image(app, user, fake):
    """Until each prediction was paid as it was read, a stage paid once for all
    (named by all their ids): resumed across that change, it pays none again."""
    import time

    from app.pipeline.runner import run_stage

    s = services(app)
    gen_id, first, second = two_images_one_read(app, user, fake)
    with s.db.Session() as session:  # as the stage did then, once both had succeeded
        session.execute(spend.Charge.__table__.delete().where(
            spend.Charge.generation_id == gen_id))  # fmt: skip
        gen = session.get(Generation, gen_id)
        gen.cost = 0
        session.commit()
        spend.pay(session, gen, 2 * PRICE["google-imagen"], "google-imagen", "generate",
                  [first, second])  # fmt: skip
    fake.predictions[second].update(latency=0.0, starting_s=0.0)
    while run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", retried=True).retry_in:
        time.sleep(0.05)
    assert load(app, gen_id)["stages"][5]["status"] == "completed"
    assert money(app, gen_id) == (2 * PRICE["google-imagen"], 0, 1)


def test_a_retried_job_holds_only_what_it_has_not_paid_for(app, user, fake):
    """Three of four images paid, the fourth refused: retried, the stage holds
    the price of one image, not four (the cap would count three twice)."""
    from app.pipeline.runner import run_stage

    s, client, price = services(app), app.test_client(), PRICE["google-imagen"]
    gen_id = generating(app, user, fake, 4)
    *made, refused = fake.predictions
    for pid in made:
        fake.predictions[pid].update(latency=0.0, starting_s=0.0)
    fake.predictions[refused].update(latency=0.0, starting_s=0.0, outcome="safety")
    assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", retried=True).error
    assert money(app, gen_id) == (3 * price, 0, 3)
    assert client.post(f"/api/generate/{gen_id}/retry", headers=user.headers).status_code == 202
    assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-2").retry_in
    assert money(app, gen_id) == (3 * price, price, 3)
    with s.db.session() as session:
        assert Decimal(str(spend.spent_today(session, user.id))) == 4 * price


def test_an_image_paid_is_recorded_once_however_often_the_stage_looks(app, user, fake):
    from sqlalchemy import event

    from app.pipeline.runner import run_stage

    s = services(app)
    gen_id, _, _ = two_images_one_read(app, user, fake)  # the first paid, the second running
    inserts = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO charges"):
            inserts.append(statement)

    event.listen(s.db.engine, "before_cursor_execute", count)
    try:
        for _ in range(3):  # three more looks while the second image is made
            assert run_stage(s.db, s.settings, s.storage, gen_id, "generate", "t-1", True).retry_in
    finally:
        event.remove(s.db.engine, "before_cursor_execute", count)
    assert inserts == [] and money(app, gen_id) == (
        PRICE["google-imagen"],
        PRICE["google-imagen"],
        1,
    )
