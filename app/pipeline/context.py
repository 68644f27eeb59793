"""What every stage function receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.domain import spend
from app.domain.models import Generation
from app.platform.config import Settings
from app.platform.storage import Storage
from app.providers.base import (
    ProviderPending,
    ProviderRejected,
    ProviderTransient,
    ProviderUnavailable,
    prediction_ids,
)


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


@contextmanager
def provider_outcomes() -> Iterator[None]:
    """A provider's errors (``providers.base``, mapped once per adapter) as
    the paying stage's outcomes."""
    try:
        yield
    except ProviderPending as exc:
        raise StageWaiting(exc.retry_in, exc.reason, exc.state) from exc
    except ProviderTransient as exc:
        raise StageTransient(str(exc), exc.retry_after) from exc
    except (ProviderRejected, ProviderUnavailable) as exc:
        raise StageFailed(str(exc)) from exc


def _no_checkpoint(*_: object) -> None:
    raise RuntimeError("checkpoint() is not available outside the runner")


def hold_cost(ctx: StageContext, state: dict[str, Any], estimate: float, what: str) -> None:
    """Before a job's first paid call (and before it takes a rate-limit token),
    hold ``estimate`` (USD, its whole price) against the user's daily cap, in
    a fenced checkpoint of ``state``; an earlier run's hold stands. Over the
    cap, the stage fails unpaid, unless ``state`` shows it has paid for part
    of its work already: refusing would waste that, so the rest is held."""
    if not estimate or ctx.generation.cost_held:
        return
    ids = prediction_ids(state)
    started = bool(ids or state.get("images"))

    def hold(session: Session, gen: Generation) -> None:
        # A resumed stage's predictions already paid for are not held again.
        left = (
            estimate - float(spend.paid_for_predictions(session, gen.id, ids)) if ids else estimate
        )
        if why := spend.hold(session, gen, max(left, 0.0), what, refuse=not started):
            raise StageFailed(why)

    ctx.checkpoint(state, also=hold)


@dataclass
class StageContext:
    session: Session  # read, add rows; commit only through checkpoint and spend.pay
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
    task_id: str | None = None  # this copy's delivery: what owns the stage (``spend.pay``)

    def output_of(self, stage: str) -> dict[str, Any]:
        """What an earlier stage recorded (``"input"``: what the request supplied)."""
        if stage == "input":
            return dict((self.generation.pipeline_data or {}).get("input") or {})
        return dict(self.generation.stage(stage).output or {})


@dataclass
class StageResult:
    output: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
