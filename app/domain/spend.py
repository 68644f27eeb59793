"""Today's spend against a user's daily cap (``users.daily_spend_cap``), for
work that pays after a generation was accepted.

Today's spend is what today's generations cost plus what they hold: a stage
that is about to pay holds its estimate (``generations.cost_held``) under the
user's row lock, so stages paying at the same moment take turns at the cap
and each counts the others. The hold becomes the cost when the stage records
it, and is let go when the stage or its generation ends otherwise. The
refine route checks the cap before it queues one; submissions go through
``quotas.check_submission``, which counts the same way."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.models import Generation, User, utcnow


def spent_today(session: Session, user_id: int) -> float:
    """What the user's generations of today (UTC) cost and hold, in USD."""
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    if session.get_bind().dialect.name == "sqlite":
        midnight = midnight.replace(tzinfo=None)  # SQLite stores naive UTC
    spent = session.scalar(
        select(func.coalesce(func.sum(Generation.cost + Generation.cost_held), 0)).where(
            Generation.user_id == user_id, Generation.created_at >= midnight
        )
    )
    return float(spent)


def refusal(session: Session, user_id: int, estimate: float, what: str = "refine") -> str | None:
    """Why ``estimate`` (USD) more would pass the user's cap today, or None."""
    cap = session.scalar(select(User.daily_spend_cap).where(User.id == user_id))
    return _over(session, user_id, cap, estimate, what)


def hold(
    session: Session, gen: Generation, estimate: float, what: str, refuse: bool = True
) -> str | None:
    """Hold ``estimate`` against the cap for ``gen`` (locked by the caller),
    unless it holds already; or, ``refuse``-ing, say why it would pass the
    cap. The user's row stays locked until the caller commits, so holds are
    made one at a time (not against the user's inserts: NO KEY UPDATE)."""
    if gen.cost_held:  # an earlier run of this stage holds it
        return None
    cap = session.scalar(
        select(User.daily_spend_cap).where(User.id == gen.user_id).with_for_update(key_share=True)
    )
    if (why := _over(session, gen.user_id, cap, estimate, what)) and refuse:
        return why
    gen.cost_held = Decimal(str(estimate))
    return None


def release(gen: Generation) -> None:
    """Let the hold go: the stage recorded its cost, or ended without paying."""
    gen.cost_held = Decimal("0")


def _over(
    session: Session, user_id: int, cap: Decimal | None, estimate: float, what: str
) -> str | None:
    if cap is None:
        return None
    return over_cap(spent_today(session, user_id), float(cap), estimate, what)


def over_cap(spent: float, cap: float, estimate: float, what: str) -> str | None:
    """The cap's one rule (submits, stages, refines): why work that may cost
    ``estimate`` (USD) is refused with ``spent`` of ``cap`` gone today, or None.
    Work that costs nothing is never refused, even by a cap of $0."""
    # To the hundredth of a cent: 0.20 + 0.04 is 0.24000000000000002 in floats.
    if estimate <= 0 or round(spent + estimate, 4) <= round(cap, 4):
        return None
    if spent >= cap:
        return f"today's spend ${spent:.2f} has reached your daily cap ${cap:.2f}"
    price = f"{estimate:.2f}" if round(estimate, 2) == estimate else f"{estimate:.4f}"
    return (
        f"this {what} may cost ${price}: with today's ${spent:.2f} "
        f"it would pass your daily cap ${cap:.2f}"
    )
