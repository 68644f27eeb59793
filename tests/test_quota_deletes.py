"""The submission rate counts a deleted generation until it leaves the window:
it was counted from the rows in ``generations`` alone, so submitting up to the
limit, deleting and submitting again was never refused. On SQLite and on
PostgreSQL (``any_db``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, update

from app.domain import tombstones
from app.domain.models import Generation, User, utcnow
from app.pipeline import maintenance
from workers.tasks import redispatch_task

LIMIT = (3, 60.0)
BATCHES = "/api/batches"


@pytest.fixture
def limited(any_db, monkeypatch) -> tuple:
    """(app, user) with a rate limit of 3 a minute."""
    app, user = any_db
    s = app.extensions["bff"]
    limited = replace(s, settings=replace(s.settings, submit_rate_limit=LIMIT))
    monkeypatch.setitem(app.extensions, "bff", limited)
    return app, user


def submit(client, user):
    return client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=user.headers)


def delete(client, user, gen_id: str) -> None:
    assert client.delete(f"/api/generate/{gen_id}", headers=user.headers).status_code == 204


def test_submit_delete_loops_do_not_pass_the_rate(limited):
    app, user = limited
    client = app.test_client()
    made = [submit(client, user) for _ in range(3)]
    assert [r.status_code for r in made] == [202] * 3
    for resp in made:
        delete(client, user, resp.json["id"])
    resp = submit(client, user)
    assert resp.status_code == 429, resp.json
    assert resp.json["error"]["code"] == "rate_limited"


def test_a_deleted_batch_counts_each_of_its_generations(limited):
    app, user = limited
    client = app.test_client()
    body = {"items": [{"prompt": f"shirt {i}"} for i in range(3)]}
    batch = client.post(BATCHES, json=body, headers=user.headers)
    assert batch.status_code == 202, batch.json
    assert client.delete(f"{BATCHES}/{batch.json['id']}", headers=user.headers).status_code == 204
    assert submit(client, user).status_code == 429
    one = client.post(BATCHES, json={"items": body["items"][:1]}, headers=user.headers)
    assert one.status_code == 429


def age(app, gen_id: str, seconds: int) -> None:
    """Make generation ``gen_id`` ``seconds`` older."""
    with app.extensions["bff"].db.session() as session:
        session.get(Generation, gen_id).created_at -= timedelta(seconds=seconds)


def test_retry_after_is_when_the_oldest_counted_leaves_deleted_or_not(limited):
    app, user = limited
    client = app.test_client()
    first = submit(client, user).json["id"]
    age(app, first, 50)  # made 50 s ago: it leaves the window in 10 s
    delete(client, user, first)
    assert [submit(client, user).status_code for _ in range(2)] == [202, 202]
    resp = submit(client, user)
    assert resp.status_code == 429
    assert 9 <= int(resp.headers["Retry-After"]) <= 11
    assert "try again in" in resp.json["error"]["message"]


def tombstones_of(app, user) -> int:
    with app.extensions["bff"].db.session() as session:
        return session.scalar(
            select(func.count()).where(tombstones.TOMBSTONES.c.user_id == user.id)
        )


def test_a_generation_deleted_after_its_window_leaves_nothing(limited):
    app, user = limited
    client = app.test_client()
    old, recent = (submit(client, user).json["id"] for _ in range(2))
    age(app, old, 61)
    delete(client, user, old)
    assert tombstones_of(app, user) == 0
    delete(client, user, recent)
    assert tombstones_of(app, user) == 1


def test_a_tombstone_goes_with_its_user(limited):
    app, user = limited
    client = app.test_client()
    delete(client, user, submit(client, user).json["id"])
    assert tombstones_of(app, user) == 1
    with app.extensions["bff"].db.session() as session:
        session.execute(sa_delete(User).where(User.id == user.id))
    assert tombstones_of(app, user) == 0


def test_the_beat_forgets_tombstones_past_the_window(limited):
    app, user = limited
    client, s = app.test_client(), app.extensions["bff"]
    gen_id = submit(client, user).json["id"]
    age(app, gen_id, 30)
    delete(client, user, gen_id)
    assert maintenance.forget_tombstones(s.db, s.settings) == 0  # 30 s old: still counted
    gone = utcnow() - timedelta(seconds=61)
    with s.db.session() as session:
        session.execute(update(tombstones.TOMBSTONES).values(created_at=gone))
    with app.app_context():
        redispatch_task()  # the beat's pass
    assert tombstones_of(app, user) == 0
