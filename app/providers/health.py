"""Provider health as the workers see it: the runner records every
``generate`` outcome (lifetime counters in ``providers``, a row in
``provider_outcomes``), and routing reads the recent window per provider. A
circuit is open while failures exceed ``settings.circuit_failure_rate`` of at
least ``circuit_min_samples`` outcomes in the window; it closes by itself as
they age out.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from app.domain.bookkeeping import Provider, ProviderOutcome
from app.domain.models import utcnow
from app.platform.config import Settings
from app.platform.db import db_time, dialect_insert
from app.providers.registry import PROVIDERS

RETENTION = timedelta(hours=24)
# Pruning on every outcome is a DELETE per generation for rows that age out
# once a day: a minute's worth more kept is nothing.
PRUNE_EVERY = timedelta(minutes=1)
# Per engine (one per app's database), then per provider.
_last_prune: weakref.WeakKeyDictionary[Any, dict[str, datetime]] = weakref.WeakKeyDictionary()
# Routing's window read is one query over the window's outcomes, one per
# generation: under load, thousands of rows per read for a breaker that looks
# at minutes. Read at most this often per process instead.
WINDOW_TTL = 1.0  # seconds
_clock = time.monotonic
# Per engine (one per app's database), then per window length.
_windows: weakref.WeakKeyDictionary[Any, dict[float, tuple[float, dict[str, WindowStats]]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()  # the two per-engine maps


@dataclass(frozen=True)
class WindowStats:
    ok: int = 0
    failed: int = 0

    @property
    def samples(self) -> int:
        return self.ok + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.samples if self.samples else 0.0

    @property
    def success_rate(self) -> float:
        """Laplace-smoothed, so one early failure does not read as 0 %."""
        return (self.ok + 1) / (self.samples + 1) if self.samples else 1.0


# Built once (their cache keys too): a generate stage records one of them.
_this_provider = Provider.id == bindparam("provider_id")
COUNT_OK = update(Provider).where(_this_provider).values(success_count=Provider.success_count + 1)
COUNT_FAILED = (
    update(Provider)
    .where(_this_provider)
    .values(failure_count=Provider.failure_count + 1, last_error=bindparam("message"))
)


def record_outcome(
    session: Session,
    provider_id: str,
    ok: bool,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    now = now or utcnow()
    message = None if ok else (error or "")[:2000]
    count = COUNT_OK if ok else COUNT_FAILED
    params = {"provider_id": provider_id, "message": message}
    # A counter bumped in SQL: no loaded Provider to bring up to date.
    options = {"synchronize_session": False}
    if not session.execute(count, params, execution_options=options).rowcount:
        _add_row(session, provider_id)  # a catalogue model the table was not seeded with
        session.execute(count, params, execution_options=options)
    session.add(ProviderOutcome(provider_id=provider_id, ok=ok, error=message, created_at=now))
    prune_if_due(session, provider_id, now)
    if not ok:  # it may open a circuit: this process's next route reads the window
        forget_windows()


def _add_row(session: Session, provider_id: str) -> None:
    """The model's counters row (migration 0001 seeded the first four models;
    the catalogue has grown since); a row another worker added first stands."""
    entry = PROVIDERS.get(provider_id)
    row = {"id": provider_id, "display_name": provider_id, "model": entry.model if entry else ""}
    insert = dialect_insert(session.get_bind().dialect.name)(Provider).values(
        **row, is_active=True, success_count=0, failure_count=0, updated_at=utcnow()
    )
    session.execute(insert.on_conflict_do_nothing(index_elements=["id"]))


def prune_if_due(session: Session, provider_id: str, now: datetime) -> None:
    """Delete ``provider_id``'s outcomes older than ``RETENTION``, at most once
    per ``PRUNE_EVERY`` per process and database."""
    with _lock:
        turns = _last_prune.setdefault(session.get_bind().engine, {})
        if provider_id in turns and now - turns[provider_id] < PRUNE_EVERY:
            return
        turns[provider_id] = now
    session.execute(
        delete(ProviderOutcome).where(
            ProviderOutcome.provider_id == provider_id,
            ProviderOutcome.created_at < db_time(session, now - RETENTION),
        )
    )


# Every provider's outcomes since ``cutoff``: a range of the time-first index
# (migration 0006), the window's rows only.
WINDOW_QUERY = (
    select(ProviderOutcome.provider_id, ProviderOutcome.ok, func.count())
    .where(ProviderOutcome.created_at >= bindparam("cutoff"))
    .group_by(ProviderOutcome.provider_id, ProviderOutcome.ok)
)


def window_stats(session: Session, window_s: float) -> dict[str, WindowStats]:
    cutoff = db_time(session, utcnow() - timedelta(seconds=window_s))
    rows = session.execute(WINDOW_QUERY, {"cutoff": cutoff})
    counts: dict[str, list[int]] = {}
    for pid, ok, n in rows:
        counts.setdefault(pid, [0, 0])[0 if ok else 1] += n
    return {pid: WindowStats(ok=c[0], failed=c[1]) for pid, c in counts.items()}


def recent_window_stats(session: Session, window_s: float) -> dict[str, WindowStats]:
    """``window_stats`` as of at most ``WINDOW_TTL`` ago in this process."""
    engine = session.get_bind().engine
    now = _clock()
    hit = _windows.get(engine, {}).get(window_s)
    if hit is not None and now < hit[0]:
        return hit[1]
    stats = window_stats(session, window_s)
    with _lock:
        _windows.setdefault(engine, {})[window_s] = (now + WINDOW_TTL, stats)
    return stats


def forget_windows() -> None:
    with _lock:
        _windows.clear()


def open_reason(stats: WindowStats, settings: Settings) -> str | None:
    if stats.samples < settings.circuit_min_samples:
        return None
    if stats.failure_rate <= settings.circuit_failure_rate:
        return None
    return (
        f"circuit open: {stats.failed} of the last {stats.samples} calls failed "
        f"within {settings.circuit_window_s}s"
    )
