"""The status read (GET /api/generate/<id>) is one Core statement, not the ORM:
it must give exactly what ``to_json`` gives for the same row, on SQLite and on
PostgreSQL (its JSON path operators differ)."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from app import create_app
from app import generations as svc
from app.pipeline import STAGE_FUNCS
from app.pipeline.context import StageFailed
from tests.conftest import make_user
from tests.support.pipeline import run_all, services, submit_prompt


@pytest.fixture(params=["sqlite", "postgres"])
def any_app(request, app):
    if request.param == "sqlite":
        yield app
        return
    env = {
        **request.getfixturevalue("service_env"),
        "CELERY_BROKER_URL": "memory://",
        "STORAGE_BACKEND": "local",
        "BFF_MEDIA_ROOT": str(request.getfixturevalue("tmp_path") / "media"),
        "BFF_SUBMIT_RATE_LIMIT": "0",
    }
    pg = create_app(env)
    yield pg
    pg.extensions["bff"].db.engine.dispose()


def _orm_json(app, user_id: int, gen_id: str) -> dict:
    with services(app).db.session() as session:
        return svc.to_json(svc.get_owned(session, user_id, gen_id))


def _both(app, client, user, gen_id: str) -> dict:
    resp = client.get(f"/api/generate/{gen_id}", headers=user.headers)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body == _orm_json(app, user.id, gen_id)
    return body


def test_status_read_matches_the_orm_shape(any_app, monkeypatch):
    app, client = any_app, any_app.test_client()
    user = make_user(app, "status-reader")
    pending = submit_prompt(client, user.headers)
    body = _both(app, client, user, pending)
    assert body["status"] == "pending" and len(body["stages"]) == 7 and body["assets"] == []

    done = submit_prompt(client, user.headers, "navy wool coat", count=3)
    run_all(app, done)
    body = _both(app, client, user, done)
    assert body["status"] == "completed" and len(body["assets"]) == 3
    assert [s["name"] for s in body["stages"]] == list(STAGE_FUNCS)
    assert body["prompt"]["enhanced"] and body["prompt"]["final"] and body["prompt"]["negative"]

    def broken(ctx):
        raise StageFailed("no provider")

    monkeypatch.setitem(STAGE_FUNCS, "generate", broken)
    failed = submit_prompt(client, user.headers, "red scarf")
    run_all(app, failed)
    body = _both(app, client, user, failed)
    assert body["status"] == "failed" and body["error"]["stage"] == "generate"


def test_status_read_is_one_statement_and_owned(any_app):
    app, client = any_app, any_app.test_client()
    owner, other = make_user(app, "owner"), make_user(app, "other")
    gen_id = submit_prompt(client, owner.headers)
    client.get(f"/api/generate/{gen_id}", headers=owner.headers)  # the key is now verified
    seen: list[str] = []
    event.listen(
        services(app).db.engine,
        "before_cursor_execute",
        lambda _c, _cur, stmt, *_a: seen.append(stmt),
    )
    assert client.get(f"/api/generate/{gen_id}", headers=owner.headers).status_code == 200
    assert len(seen) == 1
    assert client.get(f"/api/generate/{gen_id}", headers=other.headers).status_code == 404
    assert client.get("/api/generate/gen_nope", headers=owner.headers).status_code == 404
