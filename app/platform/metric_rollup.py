"""The scrape's history, rolled up: a scrape reads a few rows and what
finished in the last minutes, not every stage ever run.

The stage histograms, the retries and the cost are counters over all history.
Summed from the rows at each scrape they cost a scan of every stage (about a
second at 200,000 generations). The maintenance beat (``roll_up``) adds what
finished before a watermark into ``metric_rollups`` and moves the watermark,
in one transaction; a scrape (``totals``) reads the rollup with its watermark
in one statement and adds what finished since, through the ``finished_at``
and ``created_at`` indexes. The watermark trails the clock by ``MARGIN``: a
stage stamps its ``finished_at`` just before its commit, so none commits
behind it. Rolled up, a deleted generation's work stays counted; a stage run
again counts each run.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String, case, func, literal, select, true
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.domain.bookkeeping import MaintenanceState
from app.domain.models import Base, Generation, GenerationStage, utcnow
from app.domain.spend import Charge
from app.platform.db import begin_for_update, db_time

NAME = "metrics-rollup"  # its maintenance_state row; position: the watermark (ISO, UTC)
MARGIN = timedelta(minutes=5)
# Stage and provider latencies span milliseconds (planning) to minutes (images).
BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGES, PROVIDERS, RETRIES, COST = "stage", "provider", "retries", "cost"

Key = tuple[str, str]  # (family, label)


class MetricRollup(Base):
    """One histogram series or counter, summed up to the watermark."""

    __tablename__ = "metric_rollups"
    family: Mapped[str] = mapped_column(String(20), primary_key=True)
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[float] = mapped_column(Float, default=0.0)  # ms, or USD
    buckets: Mapped[list[int]] = mapped_column(JSON, default=list)  # counts at or under each


class Tally:
    """count, total and bucket counts of one series (buckets: histograms only)."""

    def __init__(self) -> None:
        self.count, self.total, self.buckets = 0, 0.0, [0] * len(BUCKETS_S)

    def add(self, count: Any, total: Any, buckets: Any = ()) -> None:
        self.count += int(count or 0)
        self.total += float(total or 0)
        for i, n in enumerate(buckets):
            self.buckets[i] += int(n or 0)


Tallies = dict[Key, Tally]


def totals(session: Session) -> Tallies:
    """Every series, as of now: the rollup plus what finished since its watermark."""
    rows = session.execute(
        select(MaintenanceState.position, MetricRollup)
        .select_from(MaintenanceState)
        .outerjoin(MetricRollup, true())
        .where(MaintenanceState.name == NAME)
    ).all()
    out: Tallies = defaultdict(Tally)
    watermark = None
    for position, row in rows:
        watermark = datetime.fromisoformat(position) if position else None
        if row is not None:
            out[row.family, row.label].add(row.count, row.total, row.buckets)
    for key, tally in window(session, watermark, None).items():
        out[key].add(tally.count, tally.total, tally.buckets)
    return out


def roll_up(session: Session) -> None:
    """Add what finished between the watermark and ``MARGIN`` ago to the
    rollup, and move the watermark there (the caller commits)."""
    begin_for_update(session)  # SQLite: its write lock before the read
    state = session.get(MaintenanceState, NAME, with_for_update=True)
    if state is None:  # the first roll-up (two at once: one insert fails, the beat tries again)
        state = MaintenanceState(name=NAME, removed=0)
        session.add(state)
        session.flush()
    since = datetime.fromisoformat(state.position) if state.position else None
    until = utcnow() - MARGIN
    if since is not None:  # a beat on a host whose clock is behind: never back
        until = max(until, since)
    rows = {(r.family, r.label): r for r in session.scalars(select(MetricRollup))}
    for key, tally in window(session, since, until).items():
        row = rows.get(key) or MetricRollup(
            family=key[0], label=key[1], count=0, total=0.0, buckets=[0] * len(BUCKETS_S)
        )
        tally.add(row.count, row.total, row.buckets)
        row.count, row.total, row.buckets = tally.count, tally.total, tally.buckets
        session.add(row)
    state.position, state.updated_at = until.isoformat(), utcnow()


def window(session: Session, since: datetime | None, until: datetime | None) -> Tallies:
    """What finished (stages) or was paid (charges) in [since, until)."""

    def within(col: Any) -> list[Any]:
        bounds = [] if since is None else [col >= db_time(session, since)]
        return bounds + ([] if until is None else [col < db_time(session, until)])

    out: Tallies = defaultdict(Tally)
    stage, ms = GenerationStage, GenerationStage.duration_ms
    finished = within(stage.finished_at)
    generate = [stage.name == "generate", Generation.provider.is_not(None)]
    histograms = (
        (STAGES, stage.name, [stage.status.in_(("completed", "skipped"))]),
        (PROVIDERS, Generation.provider, generate),
    )
    for family, label, where in histograms:
        cols = [func.sum(case((ms <= b * 1000, 1), else_=0)) for b in BUCKETS_S]
        q = (
            select(label, func.count(), func.sum(ms), *cols)
            .join(Generation, Generation.id == stage.generation_id)
            .where(ms.is_not(None), *finished, *where)
            .group_by(label)
        )
        for key, count, total, *buckets in session.execute(q):
            out[family, str(key)].add(count, total, buckets)
    retried = select(stage.name, func.sum(stage.attempts - 1), literal(0)).group_by(stage.name)
    paid = select(Charge.provider, literal(0), func.sum(Charge.amount))
    for family, q in (
        (RETRIES, retried.where(stage.attempts > 1, stage.finished_at.is_not(None), *finished)),
        (COST, paid.where(*within(Charge.created_at)).group_by(Charge.provider)),
    ):
        for key, count, total in session.execute(q):
            out[family, str(key)].add(count, total)
    return out
