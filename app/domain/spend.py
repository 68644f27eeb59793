"""Today's spend against a user's daily cap (``users.daily_spend_cap``), for
work that pays after a generation was accepted: the generate and refine
stages check it before their paid calls (jobs accepted together are each
checked against what the earlier ones have since spent), and the refine
route before it queues one. (Submissions go through
``quotas.check_submission``, which counts the same way.)"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.models import Generation, User, utcnow


def refusal(session: Session, user_id: int, estimate: float, what: str = "refine") -> str | None:
    """Why ``estimate`` (USD) more would pass the user's cap today, or None."""
    cap = session.scalar(select(User.daily_spend_cap).where(User.id == user_id))
    if cap is None:
        return None
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    if session.get_bind().dialect.name == "sqlite":
        midnight = midnight.replace(tzinfo=None)  # SQLite stores naive UTC
    spent = session.scalar(
        select(func.coalesce(func.sum(Generation.cost), 0)).where(
            Generation.user_id == user_id, Generation.created_at >= midnight
        )
    )
    spent, cap = float(spent), float(cap)
    if spent >= cap:
        return f"today's spend ${spent:.2f} has reached your daily cap ${cap:.2f}"
    if spent + estimate > cap:
        return (
            f"this {what} may cost ${estimate:.4f}: with today's ${spent:.2f} "
            f"it would pass your daily cap ${cap:.2f}"
        )
    return None
