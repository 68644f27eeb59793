"""What was paid is a ledger (``charges``): dated when it was paid, kept when
its generation is deleted. So the daily cap counts a refine of an older
generation on the day it is paid, and deleting a generation gives none of the
day's spend back; the cost metric and the stats' days say the same. Runs the
real ``replicate`` SDK against the fake."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command

from app.cli import upgrade_database
from app.domain import spend
from app.domain.models import Generation, utcnow
from app.domain.spend import Charge
from app.pipeline import ALL_STAGES
from app.platform.schema import alembic_config
from app.providers.refiners import UPSCALER
from tests.conftest import on_replicate
from tests.support.pipeline import load, run_through, services, set_cap, submit_prompt

IMAGE = Decimal("0.06")  # google-imagen's price of one image


@pytest.fixture
def app_config(app_config, fake):
    return on_replicate(app_config, fake)


def made(app, user) -> str:
    """A $0.06 Imagen image, made and paid."""
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id)
    assert load(app, gen_id)["status"] == "completed", load(app, gen_id)["error"]
    return gen_id


def spent_today(app, user) -> Decimal:
    with services(app).db.session() as session:
        return Decimal(str(spend.spent_today(session, user.id))).quantize(Decimal("0.0001"))


def submit_paid(app, user):
    body = {"prompt": "blue coat", "settings": {"provider": "google-imagen"}}
    return app.test_client().post("/api/generate/from-prompt", json=body, headers=user.headers)


def test_deleting_a_generation_gives_none_of_the_days_spend_back(app, user):
    gen_id = made(app, user)
    set_cap(app, user, "0.10")  # $0.06 paid: another $0.06 image does not fit
    resp = app.test_client().delete(f"/api/generate/{gen_id}", headers=user.headers)
    assert resp.status_code == 204
    assert spent_today(app, user) == IMAGE
    stats = app.test_client().get("/api/stats", headers=user.headers).get_json()
    assert stats["totalCost"] == float(IMAGE) and stats["counts"]["total"] == 0
    resp = submit_paid(app, user)
    assert resp.status_code == 403, resp.get_json()
    assert resp.get_json()["error"]["details"]["spent"] == float(IMAGE)


def test_a_refine_of_an_older_generation_is_spent_on_the_day_it_is_paid(app, user):
    gen_id = made(app, user)
    yesterday = utcnow() - timedelta(days=1)
    with services(app).db.session() as session:  # made and paid yesterday
        session.get(Generation, gen_id).created_at = yesterday
        session.execute(sa.update(Charge).values(created_at=yesterday))
    assert spent_today(app, user) == 0
    asset_id = load(app, gen_id)["assets"][0]["id"]
    resp = app.test_client().post(
        f"/api/generate/{gen_id}/assets/{asset_id}/refine",
        json={"upscale": 2},
        headers=user.headers,
    )
    assert resp.status_code == 202, resp.get_json()
    run_through(app, gen_id, ["refine"], task="late")
    upscale = Decimal(str(UPSCALER.price))
    assert spent_today(app, user) == upscale
    assert Decimal(str(load(app, gen_id)["cost"])) == IMAGE + upscale  # the generation's own
    set_cap(app, user, str(upscale + IMAGE / 2))  # what is left is less than an image
    assert submit_paid(app, user).status_code == 403

    stats = app.test_client().get("/api/stats", headers=user.headers).get_json()
    days = {d["day"]: d["byProvider"] for d in stats["costByDay"]}
    assert days == {
        yesterday.date().isoformat(): {"google-imagen": float(IMAGE)},
        utcnow().date().isoformat(): {"replicate": float(upscale)},
    }


def test_the_cost_metric_keeps_what_deleted_generations_paid(app, user):
    gen_id = made(app, user)
    resp = app.test_client().delete(f"/api/generate/{gen_id}", headers=user.headers)
    assert resp.status_code == 204
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert f'bff_generation_cost_dollars_total{{provider="google-imagen"}} {float(IMAGE)}' in text


def test_the_migration_carries_existing_costs_over(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0014")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id, name, created_at) VALUES (1, 'a', :t)"),
            {"t": "2026-12-01 10:00:00"},
        )
        for gen_id, cost in (("gen_paid", "0.12"), ("gen_free", "0")):
            conn.execute(
                sa.text(
                    "INSERT INTO generations (id, user_id, status, mode, settings, provider,"
                    " cost, pipeline_data, created_at, updated_at) VALUES (:id, 1, 'completed',"
                    " 'prompt', '{}', 'google-imagen', :cost, '{}', :t, :t)"
                ),
                {"id": gen_id, "cost": cost, "t": "2026-12-01 10:00:00"},
            )
    upgrade_database(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_id, generation_id, provider, what, amount, created_at FROM charges"
            )
        ).all()
    assert [(*r[:4], float(r[4]), str(r[5])) for r in rows] == [
        (1, "gen_paid", "google-imagen", "generate", 0.12, "2026-12-01 10:00:00")
    ]


def test_a_payment_stands_when_its_generation_is_deleted_before_the_record(
    app, user, fake, monkeypatch
):
    """The provider was paid; the designer deletes the generation before its
    stage records: the stage never records, the payment still counts."""
    client = app.test_client()
    gen_id = submit_prompt(client, user.headers, "red dress", provider="google-imagen")
    run_through(app, gen_id, ALL_STAGES[:5])
    deleted, real_pay = [], spend.pay

    def pay(*args, **kwargs):
        real_pay(*args, **kwargs)
        deleted.append(client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code)

    monkeypatch.setattr(spend, "pay", pay)
    run_through(app, gen_id, ["generate"])
    assert deleted == [204] and fake.creates == 1
    assert spent_today(app, user) == IMAGE
    set_cap(app, user, "0.10")
    assert submit_paid(app, user).status_code == 403


def test_a_payment_read_again_is_recorded_once(app, user):
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")
    with services(app).db.Session() as session:
        gen = session.get(Generation, gen_id)
        for _ in range(2):  # a resumed stage reading the same predictions again
            spend.pay(session, gen, IMAGE, "google-imagen", "generate", ["p-1", "p-2"])
        spend.pay(session, gen, IMAGE, "google-imagen", "generate", ["p-3"])  # another payment
    assert spent_today(app, user) == 2 * IMAGE
    assert Decimal(str(load(app, gen_id)["cost"])) == 2 * IMAGE


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_a_copy_taken_over_lets_go_of_no_hold_but_its_own(request, db):
    """A stalled copy that comes back and pays must not let go of what the
    copy that took its stage over holds: the cap would stop counting it."""
    prefix = "" if db == "sqlite" else "pg_"
    app, user = (request.getfixturevalue(prefix + name) for name in ("app", "user"))
    gen_id = submit_prompt(app.test_client(), user.headers, "red dress", provider="local")
    run_through(app, gen_id, ALL_STAGES[:5])
    with services(app).db.Session() as session:
        gen = session.get(Generation, gen_id)
        row = gen.stage("generate")
        row.status, row.task_id, gen.cost_held = "running", "t-new", IMAGE  # the new owner's hold
        session.commit()
        spend.pay(session, gen, IMAGE, "google-imagen", "generate", ["p-old"], owner="t-old")
        assert gen.cost_held == IMAGE  # the stage's copy of the row says so too
    assert spent_today(app, user) == 2 * IMAGE  # the old copy's payment, and the hold
    with services(app).db.Session() as session:
        gen = session.get(Generation, gen_id)
        spend.pay(session, gen, IMAGE, "google-imagen", "generate", ["p-new"], owner="t-new")
    assert spent_today(app, user) == 2 * IMAGE  # two payments, nothing held
    assert Decimal(str(load(app, gen_id)["cost"])) == 2 * IMAGE
