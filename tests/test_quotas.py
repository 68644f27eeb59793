"""Per-user submission rate limit (429 + Retry-After) and daily spend cap (403)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app import create_app
from app.domain import spend
from app.domain.models import Generation, User
from tests.conftest import make_user


@pytest.fixture
def limited_app(app_config):
    return create_app({**app_config, "BFF_SUBMIT_RATE_LIMIT": "3/60"})


def submit(client, user, prompt="red wool coat", **headers):
    return client.post(
        "/api/generate/from-prompt", json={"prompt": prompt}, headers={**user.headers, **headers}
    )


def test_submissions_over_the_rate_are_refused_with_retry_after(limited_app):
    client = limited_app.test_client()
    alice, bob = make_user(limited_app, "alice"), make_user(limited_app, "bob")
    for _ in range(3):
        assert submit(client, alice).status_code == 202
    resp = submit(client, alice)
    assert resp.status_code == 429
    assert resp.json["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # Limits are per user, and an idempotent replay is not a new submission.
    assert submit(client, bob).status_code == 202


def test_idempotent_replays_do_not_count(limited_app):
    client = limited_app.test_client()
    alice = make_user(limited_app, "alice")
    first = submit(client, alice, **{"Idempotency-Key": "k1"})
    for _ in range(5):
        again = submit(client, alice, **{"Idempotency-Key": "k1"})
        assert again.status_code == 202 and again.json["id"] == first.json["id"]


def test_daily_spend_cap(app_config, runner):
    app = create_app({**app_config, "REPLICATE_API_TOKEN": "r8_test"})  # Imagen: $0.06 an image
    client, user = app.test_client(), make_user(app, "alice")
    runner.app = app
    paid = {"prompt": "red wool coat", "settings": {"provider": "google-imagen"}}

    def submit_paid():
        return client.post("/api/generate/from-prompt", json=paid, headers=user.headers)

    result = runner.invoke(args=["users", "cap", "alice", "0.10"])
    assert result.exit_code == 0, result.output
    assert submit_paid().status_code == 202
    with app.extensions["bff"].db.Session() as session:  # pay() commits, as a stage's
        gen = session.query(Generation).filter_by(user_id=user.id).one()
        assert session.get(User, user.id).daily_spend_cap == Decimal("0.10")
        spend.pay(session, gen, Decimal("0.12"), "google-imagen", "generate")
    resp = submit_paid()
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "budget_exceeded"
    assert runner.invoke(args=["users", "cap", "alice"]).exit_code == 0
    assert submit_paid().status_code == 202


def test_a_request_the_cap_cannot_cover_is_refused_with_its_estimate(app_config, runner):
    app = create_app({**app_config, "REPLICATE_API_TOKEN": "r8_test"})  # Imagen: $0.06 an image
    client, alice = app.test_client(), make_user(app, "alice")
    runner.app = app
    assert runner.invoke(args=["users", "cap", "alice", "0.10"]).exit_code == 0
    body = {"prompt": "red wool coat", "settings": {"provider": "google-imagen", "count": 2}}
    resp = client.post("/api/generate/from-prompt", json=body, headers=alice.headers)
    assert resp.status_code == 403 and resp.json["error"]["code"] == "budget_exceeded"
    assert resp.json["error"]["details"] == {"spent": 0, "cap": 0.1, "estimate": 0.12}
    assert resp.json["error"]["message"].endswith(
        "cap $0.10; ask for fewer images or a cheaper model (settings.provider), or a higher cap"
    )
    for settings, status in (
        ({"provider": "google-imagen", "count": 1}, 202),  # $0.06 fits
        ({"provider": "auto", "count": 2}, 403),  # auto: the dearest that could serve
    ):
        body["settings"] = settings
        resp = client.post("/api/generate/from-prompt", json=body, headers=alice.headers)
        assert resp.status_code == status


def test_concurrent_submits_keep_the_rate_limit(pg_app, pg_user, at_once, monkeypatch):
    """On PostgreSQL each request counted the user's recent submissions before
    the others had committed: 30 at once took 14-17 under a limit of 10."""
    import time
    from dataclasses import replace

    from app.domain import quotas

    s = pg_app.extensions["bff"]
    limited = replace(s, settings=replace(s.settings, submit_rate_limit=(5, 60.0)))
    monkeypatch.setitem(pg_app.extensions, "bff", limited)
    real = quotas.over_cap  # widen the window between the count and the insert
    monkeypatch.setattr(quotas, "over_cap", lambda *a: time.sleep(0.05) or real(*a))
    with s.db.session() as session:  # (over_cap is only asked with a cap)
        session.get(User, pg_user.id).daily_spend_cap = Decimal("100")
    answers = at_once(12, lambda c: submit(c, pg_user))
    assert sorted(a.status_code for a in answers) == [202] * 5 + [429] * 7


def test_the_users_lock_is_not_held_through_an_upload(pg_app, pg_user, monkeypatch):
    """An image submit counted the rate under the user's lock, then stored
    the image holding it: the user's other submits, and a worker's payment
    record for them (FOR UPDATE blocked its foreign key), waited for S3."""
    import threading
    from dataclasses import replace

    from tests.support.pipeline import submit_image

    s = pg_app.extensions["bff"]
    limited = replace(s, settings=replace(s.settings, submit_rate_limit=(100, 60.0)))
    monkeypatch.setitem(pg_app.extensions, "bff", limited)
    in_put, release, real = threading.Event(), threading.Event(), s.storage.put
    monkeypatch.setattr(
        s.storage, "put", lambda *a, **kw: (in_put.set(), release.wait(30), real(*a, **kw))[2]
    )
    uploading = threading.Thread(target=lambda: submit_image(pg_app.test_client(), pg_user.headers))
    uploading.start()
    try:
        assert in_put.wait(10)

        def meanwhile() -> None:
            assert submit(pg_app.test_client(), pg_user).status_code == 202
            with s.db.Session() as session:
                late = [spend.TooLate("generate", "p-1", Decimal("0.01"), "flux-pro")]
                spend.pay_too_late(session, pg_user.id, "gen_elsewhere", late)

        other = threading.Thread(target=meanwhile)
        other.start()
        other.join(10)
        assert not other.is_alive(), "waited for another request's upload"
    finally:
        release.set()
        uploading.join(30)
