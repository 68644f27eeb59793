"""The claim's and the record's fence on PostgreSQL read the stage rows as
committed once the generation's lock is theirs: a copy that waited for the
lock behind another copy's claim must see that claim. (A statement that
locks the generation and joins its stages in one go reads the stages as they
were when it started waiting: PostgreSQL re-reads only the locked row.)"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import psycopg
import pytest
from sqlalchemy import text

from app.domain.models import Generation
from app.pipeline import lease
from app.pipeline.context import StageContext
from app.pipeline.endings import STOP
from app.pipeline.lease import lock, renew
from app.pipeline.runner import claim_stage, record, transaction
from app.platform.db import POOL_SIZE
from tests.support.locks import pg_url, wait_until_blocked_by
from tests.support.pipeline import claimed, load, new_generation, services, stages_by_name

pytestmark = pytest.mark.services


def _behind_another_copy(pg_app, gen_id: str, other_sql: str, step) -> object:
    """Run ``step(session)`` while another connection holds the generation's
    lock and changes its stage with ``other_sql``; let that commit once
    ``step`` waits on the lock; return what ``step`` returned."""
    s = services(pg_app)
    url, result = pg_url(s.db), []
    with psycopg.connect(url) as other:
        other.execute("SELECT id FROM generations WHERE id = %s FOR UPDATE", (gen_id,))
        other.execute(other_sql, (gen_id,))

        def run() -> None:
            with pg_app.app_context(), s.db.Session() as session:
                result.append(transaction(session, step))

        worker = threading.Thread(target=run)
        worker.start()
        wait_until_blocked_by(url, other.info.backend_pid)
        other.commit()
        worker.join(30)
    assert result, "the step did not finish"
    return result[0]


def test_a_claim_behind_another_copys_claim_stops(pg_app, pg_user):
    s = services(pg_app)
    gen_id = new_generation(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="t-done")  # analyze running ...
    with s.db.session() as session:  # ... and done: enhance is next, pending
        session.execute(
            text(
                "UPDATE generation_stages SET status = 'completed'"
                " WHERE generation_id = :g AND name = 'analyze'"
            ),
            {"g": gen_id},
        )
    took = "UPDATE generation_stages SET status = 'running', attempts = 1, task_id = 't-first'"
    took += " WHERE generation_id = %s AND name = 'enhance'"

    def second_claim(session, after):
        return claim_stage(session, s.settings, gen_id, "enhance", "t-second", False, after=after)

    assert _behind_another_copy(pg_app, gen_id, took, second_claim) is STOP
    enhance = stages_by_name(load(pg_app, gen_id))["enhance"]
    assert (enhance["status"], enhance["attempts"]) == ("running", 1)  # one copy works on it


def test_a_record_behind_the_copy_that_finished_the_stage_stops(pg_app, pg_user):
    s = services(pg_app)
    gen_id = new_generation(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="t-late")  # this copy holds analyze ...
    with pg_app.app_context(), s.db.Session() as session:
        ctx = StageContext(session, lock(session, gen_id), s.settings, s.storage)
        session.commit()
        finished = "UPDATE generation_stages SET status = 'completed',"
        finished += """ output = '{"by": "other"}' WHERE generation_id = %s AND name = 'analyze'"""

        def late_record(session, after):
            return record(session, ctx, "analyze", "completed", {"by": "late"}, after=after)

        # ... but another copy took it over and finishes it while this one records.
        assert _behind_another_copy(pg_app, gen_id, finished, late_record) is STOP
    analyze = stages_by_name(load(pg_app, gen_id))["analyze"]
    assert analyze["output"] == {"by": "other"}


def test_a_heartbeat_behind_a_takeover_renews_nothing(pg_app, pg_user):
    s = services(pg_app)
    gen_id = new_generation(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="t-stalled")
    before = load(pg_app, gen_id)["updatedAt"]
    took_over = "UPDATE generation_stages SET attempts = 2, task_id = 't-new'"
    took_over += " WHERE generation_id = %s AND name = 'analyze'"

    def beat(session, after):
        return renew(session, gen_id, "analyze", "t-stalled")

    assert _behind_another_copy(pg_app, gen_id, took_over, beat) is False
    assert load(pg_app, gen_id)["updatedAt"] == before  # the lease is the new copy's
    with s.db.session() as session:  # and the owner's own beat does renew it
        assert renew(session, gen_id, "analyze", "t-new") is True
    assert load(pg_app, gen_id)["updatedAt"] > before


def test_a_heartbeat_gets_through_with_every_pooled_connection_held(pg_app, pg_user):
    """A generator's threads hold the pool's connections through slow provider
    calls; a live stage's lease must still be renewed, or it is run again."""
    s = services(pg_app)
    gen_id = new_generation(pg_app, pg_user)
    claimed(pg_app, gen_id, attempts=1, task_id="t-live")
    with s.db.session() as session:
        gen = session.get(Generation, gen_id)
        stage, before = gen.stage("analyze"), gen.updated_at
    with ExitStack() as held:
        for _ in range(POOL_SIZE):  # every stage thread at work
            held.enter_context(s.db.engine.connect()).execute(text("SELECT 1"))
        with lease.heartbeat(s.db, stage, "t-live", every=0.1):
            time.sleep(1.0)
    with s.db.session() as session:
        assert session.get(Generation, gen_id).updated_at > before  # renewed
