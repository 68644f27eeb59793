"""Regression tests, in-process (SQLite), for the bugs the fault suite found."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app import generations as svc
from app import maintenance
from app.models import Generation, utcnow
from app.pipeline.runner import run_stage


@pytest.fixture
def sent(monkeypatch):
    calls: list[tuple[str, str]] = []

    def fake_dispatch(celery_app, generation_id, from_stage="analyze"):
        calls.append((generation_id, from_stage))
        return True

    monkeypatch.setattr(maintenance, "dispatch", fake_dispatch)
    return calls


def _running_since(app, user, seconds: float) -> str:
    """A generation whose ``enhance`` was claimed by a worker that then died."""
    with app.extensions["bff"].db.session() as session:
        gen = svc.create(session, user_id=user.id, mode="prompt", settings={}, prompt="linen")
        gen.status, gen.dispatched_at = "processing", utcnow() - timedelta(seconds=seconds)
        gen.stage("analyze").status = "skipped"
        st = gen.stage("enhance")
        st.status, st.attempts, st.task_id = "running", 1, "dead-task"
        st.started_at = utcnow() - timedelta(seconds=seconds)
        gen_id = gen.id
    with app.extensions["bff"].db.session() as session:
        session.get(Generation, gen_id).updated_at = utcnow() - timedelta(seconds=seconds)
    return gen_id


def test_a_redispatched_copy_takes_over_the_dead_stage(app, user, sent):
    s = app.extensions["bff"]
    gen_id = _running_since(app, user, 3600)
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert sent == [(gen_id, "enhance")]
    # Re-sending must not renew the lease, or the copy finds the stage "alive"
    # and stops, and nothing but the broker's visibility timeout recovers it.
    outcome = run_stage(s.db, s.settings, s.storage, gen_id, "enhance", task_id="new-task")
    assert outcome.proceed
    with s.db.session() as session:
        st = session.get(Generation, gen_id).stage("enhance")
        assert (st.status, st.attempts, st.task_id) == ("completed", 2, "new-task")


def test_a_copy_still_queued_is_not_sent_again_on_every_tick(app, user, sent):
    s = app.extensions["bff"]
    gen_id = _running_since(app, user, 3600)
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 0
    with s.db.session() as session:  # a stall timeout later, still nobody took it
        session.get(Generation, gen_id).dispatched_at = utcnow() - timedelta(seconds=3600)
    with s.db.session() as session:
        session.get(Generation, gen_id).updated_at = utcnow() - timedelta(seconds=3600)
    assert maintenance.redispatch_stalled(s.db, s.celery, s.settings) == 1
    assert sent == [(gen_id, "enhance")] * 2
