"""How the paying stages (``generate``, ``refine``) record what they pay,
and what is recorded when their paid work is stopped.

A payment is recorded the moment it is made (``spend.pay``, committed on
the stage's session), a database outage waited out as a checkpoint's is:
the provider has the money already. A Replicate prediction is paid as it
is first read succeeded (``paid_as_read``, a ``Job.paid``); one a cancel
finds made after the stage's last look is recorded by ``stop_paid_work``
(the runner's; a cancel, delete or timeout owes the stop to a task:
``app.pipeline.stops``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from app.domain import spend
from app.domain.models import Generation
from app.domain.spend import TooLate
from app.pipeline.context import StageContext
from app.pipeline.lease import patiently
from app.platform.config import Settings
from app.providers.base import prediction_ids
from app.providers.cancel import cancel_remote

log = logging.getLogger(__name__)


def pay(
    ctx: StageContext, amount: Decimal, provider: str, what: str, payment: list[str] | None
) -> None:
    """``spend.pay`` by this copy of the stage (its hold, if it still owns it)."""
    step = partial(spend.pay, ctx.session, ctx.generation, amount, provider, what, payment)
    patiently(ctx.session, partial(step, ctx.task_id), "payment")


def paid_as_read(
    ctx: StageContext,
    state: dict[str, Any],
    provider: str,
    what: str,
    price_of: Callable[[str, dict[str, Any]], Decimal],
) -> Callable[[str, dict[str, Any]], None]:
    """A ``Job.paid`` paying each prediction (``price_of(key, prediction)``),
    named by its id. A stage resumed from before predictions were paid one
    by one, which paid them all at once, pays none of them again."""
    ids = prediction_ids(state)
    if spend.paid_all_at_once(ctx.session, ctx.generation.id, ids):
        return lambda _key, _prediction: None

    def paid(key: str, prediction: dict[str, Any]) -> None:
        pay(ctx, price_of(key, prediction), provider, what, [prediction["id"]])

    return paid


def record_too_late(session: Session, user_id: int, gen_id: str, late: list[TooLate]) -> None:
    """``spend.pay_too_late``, a database outage waited out as every payment's."""
    if late:
        patiently(session, partial(spend.pay_too_late, session, user_id, gen_id, late), "payment")


def stop_paid_work(session: Session, settings: Settings, gen: Generation) -> None:
    """Cancel the generation's predictions still running, and record those
    the cancel found already made (past the patience it is logged: the stage
    ends all the same). The runner's, in its stage; the API's cancels and
    the timeouts owe theirs to a task (``stops``)."""
    late = cancel_remote(settings, gen).late
    try:
        record_too_late(session, gen.user_id, gen.id, late)
    except Exception:
        log.exception("%s: could not record predictions paid before the cancel: %s", gen.id, late)
