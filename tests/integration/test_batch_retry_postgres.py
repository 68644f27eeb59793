"""A batch member's retry against its batch's cancel, on PostgreSQL, where
they really run side by side: the retry takes the batch's lock before its
generation's (the order the batch's cancel and delete take them in) and
reopens the batch in the same transaction, so whoever holds the batch sees
the member retried and its batch reopened, or neither. (They were two
transactions: a cancel between them found the batch finished and left the
retried member running: "409 batch is already pending".)"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.locks import pg_url, run_behind

pytestmark = pytest.mark.services


def test_no_retried_member_is_seen_in_a_batch_still_finished(pg_app, pg_user):
    client, db = pg_app.test_client(), pg_app.extensions["bff"].db
    body = {"items": [{"prompt": "ivory linen shirt"}]}
    batch = client.post("/api/batches", json=body, headers=pg_user.headers).get_json()["id"]
    url = pg_url(db)
    with psycopg.connect(url, autocommit=True) as setup:  # its member failed, the batch done
        setup.execute("UPDATE generations SET status = 'failed' WHERE batch_id = %s", (batch,))
        setup.execute("UPDATE batches SET finished_at = now() WHERE id = %s", (batch,))
        (member,) = setup.execute(
            "SELECT id FROM generations WHERE batch_id = %s", (batch,)
        ).fetchone()

    def retry() -> int:
        return client.post(f"/api/generate/{member}/retry", headers=pg_user.headers).status_code

    with psycopg.connect(url) as holder:
        # FOR SHARE, not a cancel's FOR UPDATE: it lets a member's update (its
        # foreign key's FOR KEY SHARE) through and holds only a write of the
        # batch, so a retry made of two transactions stops between them, where
        # a cancel's lock could have fallen.
        holder.execute("SELECT id FROM batches WHERE id = %s FOR SHARE", (batch,))
        retrying, answers = run_behind(url, holder.info.backend_pid, retry)
        (status,) = holder.execute(
            "SELECT status FROM generations WHERE id = %s", (member,)
        ).fetchone()
        holder.commit()
    retrying.join(10)
    assert status == "failed"  # not retried while its batch still says finished
    assert answers == [202]
    with psycopg.connect(url) as check:
        row = check.execute("SELECT finished_at FROM batches WHERE id = %s", (batch,)).fetchone()
    assert row == (None,)  # reopened with the retry


def test_a_retry_aborted_to_break_a_deadlock_with_a_worker_runs_again(pg_app, pg_user):
    """The retry holds the batch and waits for its member, which a worker
    holds; the worker's second write of the member checks its foreign key
    (FOR KEY SHARE on the batch) and waits for the retry: PostgreSQL aborts
    one of them. The retry, when it is the one, runs again."""
    client, db = pg_app.test_client(), pg_app.extensions["bff"].db
    body = {"items": [{"prompt": "ivory linen shirt"}]}
    batch = client.post("/api/batches", json=body, headers=pg_user.headers).get_json()["id"]
    url = pg_url(db)
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("UPDATE generations SET status = 'failed' WHERE batch_id = %s", (batch,))
        (member,) = setup.execute(
            "SELECT id FROM generations WHERE batch_id = %s", (batch,)
        ).fetchone()

    def retry() -> int:
        return client.post(f"/api/generate/{member}/retry", headers=pg_user.headers).status_code

    touch = "UPDATE generations SET updated_at = now() WHERE id = %s"
    with psycopg.connect(url) as worker:
        worker.execute(touch, (member,))  # a stage's transaction, holding the member
        retrying, answers = run_behind(url, worker.info.backend_pid, retry)
        try:
            worker.execute(touch, (member,))
            worker.commit()
        except psycopg.errors.DeadlockDetected:
            worker.rollback()
    retrying.join(15)
    assert answers == [202]
