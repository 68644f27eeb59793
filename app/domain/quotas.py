"""Per-user limits checked before a generation is accepted.

- Submission rate: at most N accepted generations per window per user
  (``BFF_SUBMIT_RATE_LIMIT``, default ``100/60`` = 100 a minute, so the largest
  batch (100 items) is accepted out of the box). Counted from
  the ``generations`` table and the tombstones of those deleted inside the
  window (``tombstones``; each indexed on user_id, created_at), so it holds
  across every API process with or without Redis, and deleting does not
  make room. A retry and a refine count one each (``count_rerun``): each
  queues paid work again. Over it: 429 with ``Retry-After`` (when the
  oldest counted, deleted or not, leaves the window).
- Daily spend cap: ``users.daily_spend_cap`` (USD, optional; set with
  ``bff users cap NAME AMOUNT``). Once what was paid today (UTC) reaches it,
  or a request's estimate would pass it, submissions that may cost anything are
  refused with 403 ``budget_exceeded`` (the rule: ``spend.over_cap``); free
  work (the local provider) never is. What running jobs hold against the
  cap counts as spent (``spend.hold``); what was paid is the ledger of
  ``spend.pay``, so deleting a generation gives nothing back.
"""

from __future__ import annotations

import math

from sqlalchemy import Subquery, bindparam, func, select, union_all
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.domain.models import Generation, User, utcnow
from app.domain.spend import SPENT, midnight, over_cap
from app.domain.tombstones import TOMBSTONES, record_rerun, window_start
from app.platform.config import Settings
from app.platform.db import begin_for_update, db_time

# What a designer refused by the cap can do now (prices: GET /api/providers).
WAYS_OUT = "; ask for fewer images or a cheaper model (settings.provider), or a higher cap"


def _oldest_in_window(user_id, created_at) -> Subquery:
    """The user's oldest ``limit`` times in the rate window, through the
    table's (user_id, created_at) index."""
    return (
        select(created_at.label("at"))
        .where(user_id == bindparam("user_id"), created_at >= bindparam("since"))
        .order_by(created_at)
        .limit(bindparam("limit"))
        .subquery()
    )


def _quota_statement():
    """Built once, its parameters bound per call: the user's submissions in the
    rate window, made or deleted since (``tombstones``), each table read as
    far as the limit at most (so up to twice the limit counted), the oldest
    of them, the user's daily cap and today's spend, with what is held
    (``spend.SPENT``, summed only when there is a cap). One statement: the
    submit's only read."""
    made = _oldest_in_window(Generation.user_id, Generation.created_at)
    gone = _oldest_in_window(TOMBSTONES.c.user_id, TOMBSTONES.c.created_at)
    recent = union_all(select(made.c.at), select(gone.c.at)).subquery()
    cap = select(User.daily_spend_cap).where(User.id == bindparam("user_id")).scalar_subquery()
    spent = select(SPENT).where(cap.is_not(None)).scalar_subquery()
    return select(func.count(), func.min(recent.c.at), cap, spent).select_from(recent)


QUOTA = _quota_statement()


def lock_user(session: Session, user_id: int) -> None:
    """The user's row, locked until the caller's transaction ends: a limit
    counted from rows (submissions, personas) is then counted after the
    user's other requests committed theirs, not before, as concurrent
    requests each did (30 at once took 17 under a limit of 10)."""
    begin_for_update(session)
    # NO KEY UPDATE, as spend.hold's: rows referencing the user (a charge, a
    # delivery, feedback) are inserted meanwhile without waiting for it.
    session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


def check_submission(
    session: Session,
    settings: Settings,
    user_id: int,
    estimate: float = 0.0,
    count: int = 1,
    lock: bool = True,
) -> None:
    """429 over the submission rate; 403 when this request's ``estimate``
    (USD at most; 0 is never refused) would pass the daily cap.
    ``count``: how many generations the request makes (a batch's each count).
    With a rate limit, holds the user's lock (``lock_user``) until the caller
    commits, unless ``lock`` is False (a look before slow work, made again
    locked right before the insert). (The cap needs no lock: a job holds its
    price before it pays, under its generation's lock, ``spend.hold``.)"""
    limit, window = settings.submit_rate_limit
    if limit > 0 and lock:
        lock_user(session, user_id)
    now = utcnow()
    params = {
        "user_id": user_id,
        "since": window_start(session, settings, now),
        "midnight": db_time(session, midnight()),
        "limit": max(limit, 1),
    }
    counted, oldest, cap_usd, spent_usd = session.execute(QUOTA, params).one()
    recent = min(counted, limit)
    if limit > 0 and recent + count > limit:
        # When the oldest leaves the window (a batch may need more to leave).
        wait = 1
        if oldest is not None:
            wait = max(1, math.ceil(window - (now - oldest).total_seconds()))
        asked = f" ({recent} made, {count} more asked)" if count > 1 else ""
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit} generations, retries and refines per {window:g} s{asked}; "
            f"try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if cap_usd is None:
        return
    spent, cap = float(spent_usd), float(cap_usd)
    if why := over_cap(spent, cap, estimate, "request"):
        details = {"spent": round(spent, 4), "cap": round(cap, 4), "estimate": round(estimate, 4)}
        said = f"{why}{WAYS_OUT}" if spent < cap else why  # (reached: only free work runs)
        raise ApiError(403, "budget_exceeded", said, details)


def count_rerun(session: Session, settings: Settings, user_id: int) -> None:
    """A retry or a refine, about to be queued: it runs paid work again
    without a new generation, so it counts against the submission rate as
    one (429 over it), as a submit does, until it leaves the window. Holds
    the user's lock until the caller commits. (Its cost is the caller's to
    check: a refine's now, a retry's when its job holds its price.)"""
    if settings.submit_rate_limit[0] <= 0:
        return
    check_submission(session, settings, user_id)
    record_rerun(session, user_id)
