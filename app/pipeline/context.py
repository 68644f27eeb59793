"""What every stage function receives and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.domain import spend
from app.domain.models import Generation
from app.platform.config import Settings
from app.platform.storage import Storage


class StageFailed(Exception):
    """The stage cannot succeed for this input: fail the generation with this message."""


class StageTransient(Exception):
    """A dependency hiccup: retry the stage later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StageLeaseLost(Exception):
    """This copy of the stage was presumed lost and another copy took it over:
    stop at once, record nothing, pay for nothing."""


class GenerationEnded(StageLeaseLost):
    """The generation was canceled (or timed out) while this stage worked:
    what the checkpoint held is saved, so predictions it has just paid for
    can be canceled at the provider; stop and pay for nothing more."""


class StageWaiting(Exception):
    """Not done yet, nothing wrong: run the stage again in ``retry_in`` seconds
    (a provider still working, a rate-limit token not yet free). Waiting does
    not count as an attempt and frees the worker meanwhile. ``state`` is
    merged into the stage's checkpoint with the wait (``ctx.previous`` of the
    next run)."""

    def __init__(self, retry_in: float, reason: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.retry_in = retry_in
        self.reason = reason
        self.state = state or {}


def _no_checkpoint(state: dict[str, Any], also: object = None) -> None:
    raise RuntimeError("checkpoint() is not available outside the runner")


def cap_hold(estimate: float, what: str) -> Callable[[Session, Generation], None] | None:
    """What a paying stage's checkpoints also do (``lease.paying``'s ``hold``):
    hold ``estimate`` (USD) against the user's daily cap before the first
    paid call, or fail the stage, unpaid, when it would pass the cap."""
    if not estimate:
        return None

    def hold(session: Session, gen: Generation) -> None:
        if why := spend.hold(session, gen, estimate, what):
            raise StageFailed(why)

    return hold


@dataclass
class StageContext:
    session: Session  # read what you need, add rows; never commit
    # The generation with its stages, as the claim left it. A stage assigns
    # only the columns it owns (route: provider, model; generate: cost).
    generation: Generation
    settings: Settings
    storage: Storage
    # What an earlier attempt of this stage saved with checkpoint(), or {}.
    previous: dict[str, Any] = field(default_factory=dict)
    # Durably save partial progress now, in its own transaction (e.g. a
    # provider's prediction id before waiting on it), so a retry resumes it.
    # (``lease.checkpointer``: its ``also`` writes more under the fence.)
    checkpoint: Callable[..., None] = _no_checkpoint

    def output_of(self, stage: str) -> dict[str, Any]:
        """What an earlier stage recorded (``"input"``: what the request supplied)."""
        if stage == "input":
            return dict((self.generation.pipeline_data or {}).get("input") or {})
        return dict(self.generation.stage(stage).output or {})


@dataclass
class StageResult:
    output: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
