"""Per-user limits checked before a generation is accepted.

- Submission rate: at most N accepted generations per window per user
  (``BFF_SUBMIT_RATE_LIMIT``, default ``60/60`` = 60 a minute). Counted from
  the ``generations`` table (index on user_id, created_at), so it holds across
  every API process with or without Redis. Over it: 429 with ``Retry-After``.
- Daily spend cap: ``users.daily_spend_cap`` (USD, optional; set with
  ``bff users cap NAME AMOUNT``). Once today's (UTC) cost reaches it,
  submissions are refused with 403 ``budget_exceeded``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.domain.models import Generation, User, utcnow
from app.platform.config import Settings


def check_submission(session: Session, settings: Settings, user_id: int) -> None:
    limit, window = settings.submit_rate_limit
    if limit > 0:
        since = utcnow() - timedelta(seconds=window)
        recent = session.scalars(
            select(Generation.created_at)
            .where(Generation.user_id == user_id, Generation.created_at >= _db_time(session, since))
            .order_by(Generation.created_at)
            .limit(limit)
        ).all()
        if len(recent) >= limit:
            oldest = recent[0] if recent[0].tzinfo else recent[0].replace(tzinfo=UTC)
            wait = max(1, math.ceil(window - (utcnow() - oldest).total_seconds()))
            raise ApiError(
                429,
                "rate_limited",
                f"at most {limit} generations per {window:g} s; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
    cap = session.scalar(select(User.daily_spend_cap).where(User.id == user_id))
    if cap is not None:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        spent = session.scalar(
            select(func.coalesce(func.sum(Generation.cost), 0)).where(
                Generation.user_id == user_id, Generation.created_at >= _db_time(session, midnight)
            )
        )
        if spent >= cap:
            raise ApiError(
                403,
                "budget_exceeded",
                f"today's spend ${float(spent):.2f} has reached your daily cap ${float(cap):.2f}",
            )


def _db_time(session: Session, dt: datetime) -> datetime:
    # SQLite stores naive UTC; compare like with like.
    return dt.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else dt
