"""The submission rate on PostgreSQL once deletes leave tombstones
(``app.domain.tombstones``): the submit still reads the rate in one
statement, through indexes only; and a member deleted while its batch is
deleted is counted once."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import func, select

from app.domain.models import Generation
from app.domain.tombstones import TOMBSTONES
from tests.support.locks import pg_url, run_behind
from tests.support.plans import assert_no_table_read_whole, plans, selects_run_by

pytestmark = pytest.mark.services


@pytest.fixture
def limited(pg_app, monkeypatch):
    s = pg_app.extensions["bff"]
    limited = replace(s, settings=replace(s.settings, submit_rate_limit=(10, 60.0)))
    monkeypatch.setitem(pg_app.extensions, "bff", limited)
    return pg_app


def submit(client, user):
    resp = client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=user.headers)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def test_the_rate_is_one_indexed_statement_over_generations_and_tombstones(limited, pg_user):
    client, db = limited.test_client(), limited.extensions["bff"].db
    gen_id = submit(client, pg_user)
    assert client.delete(f"/api/generate/{gen_id}", headers=pg_user.headers).status_code == 204
    statements = selects_run_by(db.engine, lambda: submit(client, pg_user))
    rate = [(stmt, params) for stmt, params in statements if "submission_tombstones" in stmt]
    assert len(rate) == 1 and "FROM generations" in rate[0][0], statements
    for statement, _, plan in plans(db.engine, rate):
        assert_no_table_read_whole(plan, {"generations", "submission_tombstones"}, statement)


def test_a_member_deleted_as_its_batch_is_deleted_is_counted_once(limited, pg_user):
    client, s = limited.test_client(), limited.extensions["bff"]
    body = {"items": [{"prompt": f"shirt {i}"} for i in range(3)]}
    batch = client.post("/api/batches", json=body, headers=pg_user.headers).get_json()["id"]
    # Every member final: the batch's delete has nothing to stop, and locks
    # its members first as it buries them.
    assert client.post(f"/api/batches/{batch}/cancel", headers=pg_user.headers).status_code == 200
    with s.db.session() as session:
        member = session.scalars(select(Generation.id).where(Generation.batch_id == batch)).first()
    url = pg_url(s.db)
    with psycopg.connect(url) as single:  # DELETE /api/generate/<member>, about to commit
        single.execute(
            "INSERT INTO submission_tombstones (user_id, created_at)"
            " SELECT user_id, created_at FROM generations WHERE id = %s FOR UPDATE",
            (member,),
        )
        single.execute("DELETE FROM generations WHERE id = %s", (member,))
        deleting, answers = run_behind(
            url,
            single.info.backend_pid,
            lambda: client.delete(f"/api/batches/{batch}", headers=pg_user.headers).status_code,
        )
        single.commit()
    deleting.join(30)
    assert answers == [204]
    with s.db.session() as session:
        buried = session.scalar(select(func.count()).where(TOMBSTONES.c.user_id == pg_user.id))
    assert buried == 3
