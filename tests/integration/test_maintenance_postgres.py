"""The maintenance beat's looks on PostgreSQL (it runs every few seconds,
whatever the history): with sequential scans priced out, no statement that
``redispatch_stalled`` or ``expire_overdue`` runs reads a whole table. An OR
of "unfinished" and "completed with an open late refine" used to read every
generation, and the late-refine look every stage row."""

from __future__ import annotations

import json

import pytest

from app.domain.models import OPEN_REFINE
from app.domain.states import LATE_STAGE, S_PENDING, S_RUNNING
from app.pipeline import maintenance
from tests.support.pipeline import run_all, submit_prompt
from tests.support.plans import assert_no_table_read_whole, plans, selects_run_by

TABLES = {"generations", "generation_stages"}


@pytest.mark.services
def test_the_beats_looks_have_an_index_path(pg_app, pg_user):
    client, s = pg_app.test_client(), pg_app.extensions["bff"]
    gen_id = submit_prompt(client, pg_user.headers, "red silk dress", provider="local")
    run_all(pg_app, gen_id)  # a completed generation, with its stage rows

    def beat() -> None:
        maintenance.redispatch_stalled(s.db, s.celery, s.settings)
        maintenance.expire_overdue(s.db, s.settings)

    statements = selects_run_by(s.db.engine, beat)
    assert len(statements) >= 4  # two looks to re-send, two to time out
    refine_looks = 0
    for statement, params, plan in plans(s.db.engine, statements):
        assert_no_table_read_whole(plan, TABLES, statement)
        if "generation_stages" in statement and "refine" in str(params):
            # The open refines come from their partial index, not every stage row.
            assert "ix_generation_stages_open_refine" in json.dumps(plan), statement
            refine_looks += 1
    assert refine_looks == 2  # the re-send's and the time-out's


def test_the_open_refine_index_names_the_states_it_stands_for():
    """The index's predicate is SQL text (models cannot import the states)."""
    assert OPEN_REFINE == f"name = '{LATE_STAGE}' AND status IN ('{S_PENDING}', '{S_RUNNING}')"
