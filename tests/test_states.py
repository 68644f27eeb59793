"""Status transitions: app/domain/states.py is the one place that decides them."""

from __future__ import annotations

import pytest

from app.domain.models import Generation, GenerationStage
from app.domain.states import (
    CANCELED,
    COMPLETED,
    FAILED,
    FINAL,
    GENERATION_STATUSES,
    PENDING,
    PROCESSING,
    S_COMPLETED,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    S_SKIPPED,
    IllegalTransition,
    can_transition,
    set_stage_status,
    set_status,
)

LEGAL = {  # current -> the statuses it may move to
    PENDING: {PROCESSING, FAILED, CANCELED},
    PROCESSING: {COMPLETED, FAILED, CANCELED, PENDING},
    FAILED: {PENDING},
}
ALL_PAIRS = [(a, b) for a in GENERATION_STATUSES for b in GENERATION_STATUSES if a != b]


def gen(status: str) -> Generation:
    return Generation(id="gen_x", user_id=1, status=status, mode="prompt")


def stage(status: str) -> GenerationStage:
    return GenerationStage(name="enhance", position=1, status=status, attempts=0)


def test_final_states():
    assert FINAL == {COMPLETED, FAILED, CANCELED}


@pytest.mark.parametrize("current,target", ALL_PAIRS)
def test_generation_transition_table(current, target):
    legal = target in LEGAL.get(current, ())
    assert can_transition(current, target) == legal
    g = gen(current)
    if legal:
        set_status(g, target)
        assert g.status == target
        assert g.updated_at is not None
    else:
        with pytest.raises(IllegalTransition) as err:
            set_status(g, target)
        assert g.status == current
        assert (err.value.current, err.value.target) == (current, target)


def test_same_status_is_a_no_op():
    g = gen(COMPLETED)
    set_status(g, COMPLETED)
    assert g.status == COMPLETED and g.updated_at is None


def test_completed_sets_completed_at_but_failed_and_canceled_do_not():
    g = gen(PROCESSING)
    set_status(g, COMPLETED)
    assert g.completed_at == g.updated_at is not None
    for final in (FAILED, CANCELED):
        g = gen(PROCESSING)
        set_status(g, final)
        assert g.completed_at is None


def test_retry_failed_to_pending_clears_the_error():
    g = gen(PROCESSING)
    set_status(g, FAILED)
    g.error_stage, g.error_message = "generate", "provider said no"
    set_status(g, PENDING)
    assert g.status == PENDING
    assert g.error_stage is None and g.error_message is None and g.completed_at is None


STAGE_LEGAL = {
    S_PENDING: {S_RUNNING, S_SKIPPED, S_FAILED},
    S_RUNNING: {S_COMPLETED, S_SKIPPED, S_FAILED, S_PENDING, S_RUNNING},  # re-claimed on redelivery
    S_FAILED: {S_PENDING},
}
STAGE_STATUSES = (S_PENDING, S_RUNNING, S_COMPLETED, S_SKIPPED, S_FAILED)


@pytest.mark.parametrize("current,target", [(a, b) for a in STAGE_STATUSES for b in STAGE_STATUSES])
def test_stage_transition_table(current, target):
    """Finished stages never run again; the same status again is a no-op but for running."""
    s = stage(current)
    if target in STAGE_LEGAL.get(current, ()) or current == target != S_RUNNING:
        set_stage_status(s, target)
        assert s.status == target
    else:
        with pytest.raises(IllegalTransition):
            set_stage_status(s, target)
        assert s.status == current


def test_a_loaded_time_is_aware_utc_whatever_the_sessions_zone():
    """PostgreSQL answers in the session's time zone; SQLite in naive UTC."""
    from datetime import UTC, datetime, timedelta, timezone

    from app.platform.db import UtcDateTime

    paris = datetime(2026, 12, 7, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    loaded = UtcDateTime().process_result_value(paris, None)
    assert loaded == paris and loaded.tzinfo == UTC and loaded.hour == 14
    naive = UtcDateTime().process_result_value(datetime(2026, 12, 7, 14, 0), None)
    assert naive.tzinfo == UTC and naive.hour == 14
