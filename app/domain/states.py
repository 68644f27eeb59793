"""The one place that decides which status transitions are legal.

Generation:  pending -> processing -> completed
                    \\-> failed  <-/      (failed -> pending on retry)
                    \\-> canceled <-/
Stage:       pending -> running -> completed | skipped | failed
                           \\-> pending (transient error, retried)
"""

from __future__ import annotations

from app.domain.models import Generation, GenerationStage, utcnow

GENERATION_STATUSES = ("pending", "processing", "completed", "failed", "canceled")
PENDING, PROCESSING, COMPLETED, FAILED, CANCELED = GENERATION_STATUSES
FINAL = frozenset({COMPLETED, FAILED, CANCELED})

_GENERATION = {
    PENDING: {PROCESSING, FAILED, CANCELED},
    PROCESSING: {COMPLETED, FAILED, CANCELED, PENDING},
    FAILED: {PENDING},
    COMPLETED: set(),
    CANCELED: set(),
}

# No way out but deletion (failed has one: retry). What the read cache may keep.
TERMINAL = frozenset(s for s, targets in _GENERATION.items() if not targets)

STAGE_STATUSES = ("pending", "running", "completed", "skipped", "failed")
S_PENDING, S_RUNNING, S_COMPLETED, S_SKIPPED, S_FAILED = STAGE_STATUSES
STAGE_DONE = frozenset({S_COMPLETED, S_SKIPPED})
_STAGE = {
    S_PENDING: {S_RUNNING, S_SKIPPED, S_FAILED},
    S_RUNNING: {S_COMPLETED, S_SKIPPED, S_FAILED, S_PENDING, S_RUNNING},
    S_FAILED: {S_PENDING},
    S_COMPLETED: set(),
    S_SKIPPED: set(),
}


class IllegalTransition(Exception):
    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"{kind} cannot go from {current} to {target}")
        self.current, self.target = current, target


def can_transition(current: str, target: str) -> bool:
    return target in _GENERATION[current]


def set_status(gen: Generation, target: str) -> None:
    if gen.status == target:
        return
    if not can_transition(gen.status, target):
        raise IllegalTransition("generation", gen.status, target)
    gen.status = target
    gen.updated_at = utcnow()
    if target in FINAL:
        gen.completed_at = gen.updated_at if target == COMPLETED else None
    if target == PENDING:
        gen.error_stage = gen.error_message = gen.error_code = None
        gen.completed_at = None


def set_stage_status(stage: GenerationStage, target: str) -> None:
    if stage.status == target and target != S_RUNNING:
        return
    if target not in _STAGE[stage.status]:
        raise IllegalTransition("stage", stage.status, target)
    stage.status = target


# The one stage that also runs on a completed generation: a refine asked for
# after the fact (POST …/assets/<id>/refine). It adds variants and leaves the
# generation completed; everything else stops at a final generation.
LATE_STAGE = "refine"
LATE_REQUEST = "refine"  # the pipeline_data key of its request (asset, options, askedAt)
# The pipeline_data keys of the Idempotency-Key of the latest cancel and retry.
CANCEL_REQUEST, RETRY_REQUEST = "cancelRequest", "retryRequest"
REQUEST_SLOTS = (LATE_REQUEST, CANCEL_REQUEST, RETRY_REQUEST)
# A stage output's marks of a wait: parked on a provider's work, or a retry
# not due yet (both hold its stage from being run); or a wait being resumed
# (a copy lost as it only looked again is taken over as a wait: no attempt).
# A claim clears them.
WAITING, RETRY_AT, RESUMED = "waiting", "retryAt", "resumed"
HOLDS = (WAITING, RETRY_AT, RESUMED)


def clear_holds(stage: GenerationStage) -> None:
    """Take a stage's wait marks out of its output; its checkpoint stays."""
    if any(k in (stage.output or {}) for k in HOLDS):
        stage.output = {k: v for k, v in stage.output.items() if k not in HOLDS}


def refining(gen: Generation) -> bool:
    """A completed generation with a refine asked for after the fact still to run."""
    return gen.status == COMPLETED and any(
        s.name == LATE_STAGE and s.status in (S_PENDING, S_RUNNING) for s in gen.stages
    )


def ended_for(gen: Generation, stage: str) -> bool:
    """The generation has ended as far as ``stage`` is concerned."""
    return gen.status in FINAL and not (gen.status == COMPLETED and stage == LATE_STAGE)
