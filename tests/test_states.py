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

LEGAL = {
    (PENDING, PROCESSING),
    (PENDING, FAILED),
    (PENDING, CANCELED),
    (PROCESSING, COMPLETED),
    (PROCESSING, FAILED),
    (PROCESSING, CANCELED),
    (PROCESSING, PENDING),
    (FAILED, PENDING),
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
    assert can_transition(current, target) == ((current, target) in LEGAL)
    g = gen(current)
    if (current, target) in LEGAL:
        set_status(g, target)
        assert g.status == target
        assert g.updated_at is not None
    else:
        with pytest.raises(IllegalTransition) as err:
            set_status(g, target)
        assert g.status == current
        assert (err.value.current, err.value.target) == (current, target)


@pytest.mark.parametrize("final", [COMPLETED, CANCELED])
def test_completed_and_canceled_are_terminal(final):
    for target in GENERATION_STATUSES:
        if target != final:
            with pytest.raises(IllegalTransition):
                set_status(gen(final), target)


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
    (S_PENDING, S_RUNNING),
    (S_PENDING, S_SKIPPED),
    (S_PENDING, S_FAILED),
    (S_RUNNING, S_COMPLETED),
    (S_RUNNING, S_SKIPPED),
    (S_RUNNING, S_FAILED),
    (S_RUNNING, S_PENDING),
    (S_RUNNING, S_RUNNING),  # a redelivered message re-claims a running stage
    (S_FAILED, S_PENDING),
}
STAGE_STATUSES = (S_PENDING, S_RUNNING, S_COMPLETED, S_SKIPPED, S_FAILED)


@pytest.mark.parametrize(
    "current,target",
    [(a, b) for a in STAGE_STATUSES for b in STAGE_STATUSES if a != b or a == S_RUNNING],
)
def test_stage_transition_table(current, target):
    s = stage(current)
    if (current, target) in STAGE_LEGAL:
        set_stage_status(s, target)
        assert s.status == target
    else:
        with pytest.raises(IllegalTransition):
            set_stage_status(s, target)
        assert s.status == current


@pytest.mark.parametrize("done", [S_COMPLETED, S_SKIPPED])
def test_finished_stages_never_run_again(done):
    s = stage(done)
    set_stage_status(s, done)  # same status: no-op
    for target in (S_PENDING, S_RUNNING, S_FAILED):
        with pytest.raises(IllegalTransition):
            set_stage_status(s, target)
