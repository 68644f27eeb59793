"""The daily cap holds while jobs pay: a stage about to pay holds its
estimate (``generations.cost_held``) under the user's row lock, so jobs that
start paying at the same moment count each other; the hold becomes a payment
when the provider is paid (``spend.pay``), and is let go when it ends
otherwise. Runs the
real ``replicate`` SDK against the fake."""

from __future__ import annotations

import threading
from decimal import Decimal

import psycopg
import pytest

from app import create_app
from app.domain import spend
from app.domain.models import Generation
from app.pipeline import ALL_STAGES
from app.pipeline.runner import run_stage
from tests.conftest import make_user, on_replicate
from tests.support.locks import pg_url, wait_until_blocked_by
from tests.support.pipeline import (
    load,
    new_generation,
    paying,
    run_through,
    services,
    set_cap,
    stages_by_name,
    submit_prompt,
)

IMAGE = Decimal("0.06")  # google-imagen's price of one image


@pytest.fixture
def app_config(app_config, fake):
    return on_replicate(app_config, fake)


def held(app, gen_id: str) -> Decimal:
    with services(app).db.session() as session:
        return session.get(Generation, gen_id).cost_held


def submit(app, user) -> str:
    return submit_prompt(app.test_client(), user.headers, "red dress", provider="google-imagen")


def test_a_job_paying_holds_its_cost_so_another_is_refused_before_paying(app, user, fake):
    set_cap(app, user, "0.09")  # one $0.06 image
    first, second = submit(app, user), submit(app, user)  # both accepted: nothing spent yet
    paying(app, fake, first)
    assert held(app, first) == IMAGE and fake.creates == 1
    run_through(app, second)
    gen = load(app, second)
    assert gen["status"] == "failed" and gen["error"]["stage"] == "generate"
    assert "this image may cost" in gen["error"]["message"], gen["error"]
    assert fake.creates == 1  # refused before its create
    assert held(app, second) == 0


def test_a_submit_counts_what_running_jobs_hold(app, user, fake):
    set_cap(app, user, "0.09")
    paying(app, fake, submit(app, user))
    resp = app.test_client().post(
        "/api/generate/from-prompt",
        json={"prompt": "red dress", "settings": {"provider": "google-imagen"}},
        headers=user.headers,
    )
    assert resp.status_code == 403 and resp.json["error"]["code"] == "budget_exceeded"
    assert resp.json["error"]["details"]["spent"] == float(IMAGE)


def test_the_hold_becomes_the_cost_once(app, user, fake):
    set_cap(app, user, "0.13")  # two images, only if the first is counted once
    first = submit(app, user)
    paying(app, fake, first, latency=1.0)
    assert held(app, first) == IMAGE
    fake.latency = 0.05
    run_through(app, first, ["generate", "store"])
    gen = load(app, first)
    assert gen["status"] == "completed" and gen["cost"] == float(IMAGE)
    assert held(app, first) == 0
    second = submit(app, user)
    run_through(app, second)
    assert load(app, second)["status"] == "completed", load(app, second)["error"]
    assert fake.creates == 2


@pytest.mark.parametrize("ending", ["canceled", "failed"])
def test_a_job_that_ends_unpaid_lets_its_hold_go(app, user, fake, ending):
    set_cap(app, user, "0.09")
    first, second = submit(app, user), submit(app, user)
    if ending == "canceled":
        paying(app, fake, first)
        resp = app.test_client().post(f"/api/generate/{first}/cancel", headers=user.headers)
        assert resp.status_code == 200
    else:
        fake.inject("safety")  # the prediction ends failed (E005)
        run_through(app, first)
        assert stages_by_name(load(app, first))["generate"]["status"] == "failed"
    assert held(app, first) == 0 and load(app, first)["cost"] == 0
    fake.latency = 0.05
    run_through(app, second)
    assert load(app, second)["status"] == "completed", load(app, second)["error"]


@pytest.mark.services
def test_a_refused_job_takes_no_rate_limit_token(app_config, fake, redis_url):
    """The cap is held before the shared token is taken: a refused job must
    not leave another user's job waiting for a token it never used. (The
    tokens in a Redis db of its own: the per-process buckets outlive a test.)"""
    limited = {**app_config, "REDIS_URL": redis_url, "BFF_RATE_LIMIT_GOOGLE_IMAGEN": "2/600"}
    app = create_app(limited)
    alice, bob = make_user(app, "alice"), make_user(app, "bob")
    set_cap(app, alice, "0.09")
    first, second = submit(app, alice), submit(app, alice)
    paying(app, fake, first)  # the first token
    run_through(app, second)
    assert load(app, second)["status"] == "failed" and fake.creates == 1
    fake.latency = 0.05
    s, theirs = services(app), submit(app, bob)
    run_through(app, theirs, ALL_STAGES[:5])
    out = run_stage(s.db, s.settings, s.storage, theirs, "generate", task_id="t-generate")
    assert fake.creates == 2, f"bob waits for a token alice's refusal took: {out}"


def test_a_job_that_paid_in_part_holds_the_rest_without_refusal(app, user, fake):
    """Its hold let go (say by a timeout, then a retry), a job that has paid
    for part of its work holds again, even over the cap: refusing it then
    would waste what it paid."""
    gen_id = submit(app, user)
    paying(app, fake, gen_id)
    with services(app).db.session() as session:
        session.get(Generation, gen_id).cost_held = Decimal("0")
    set_cap(app, user, "0.01")
    s = services(app)
    out = run_stage(s.db, s.settings, s.storage, gen_id, "generate", task_id="t-generate")
    assert out.retry_in is not None, load(app, gen_id)["error"]  # still waiting, not refused
    assert held(app, gen_id) == IMAGE and fake.creates == 1


@pytest.mark.services
def test_holds_are_made_one_at_a_time_on_postgresql(pg_app, pg_user):
    """A hold waits for the user's row while another job holds: it then counts
    what that job held, and refuses."""
    s = services(pg_app)
    first, second = new_generation(pg_app, pg_user), new_generation(pg_app, pg_user)
    set_cap(pg_app, pg_user, "0.09")
    url, answers = pg_url(s.db), []
    with psycopg.connect(url) as other:
        other.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (pg_user.id,))
        other.execute("UPDATE generations SET cost_held = 0.06 WHERE id = %s", (first,))

        def hold_second() -> None:
            with s.db.Session() as session, session.begin():
                gen = session.get(Generation, second)
                answers.append(spend.hold(session, gen, float(IMAGE), "image"))

        worker = threading.Thread(target=hold_second)
        worker.start()
        wait_until_blocked_by(url, other.info.backend_pid)
        other.commit()
        worker.join(30)
    assert answers and answers[0] is not None and "daily cap" in answers[0]
    assert held(pg_app, second) == 0
