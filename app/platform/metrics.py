"""GET /metrics: Prometheus metrics computed at scrape time.

From the database and the broker rather than in-process counters: the work
happens in many gunicorn and Celery processes, and Postgres already holds
every generation, stage timing, retry and cost, so one scrape of any web
process gives the same complete numbers (no multiprocess directory, nothing
lost on restart). Counters only go down when rows are deleted; the cost is
the payments' ledger (``charges``), kept when generations are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import case, func, select

from app.domain.bookkeeping import MaintenanceState, Provider
from app.domain.models import Generation, GenerationStage
from app.domain.spend import Charge
from app.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

# Stage and provider latencies span milliseconds (planning) to minutes (images).
BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUES = ("pipeline", "generation")

bp = Blueprint("metrics", __name__)


def _histograms(session, group_col, where, name: str, doc: str, label: str) -> Metric:
    """Durations (stored in ms) as a Prometheus histogram in seconds."""
    ms = GenerationStage.duration_ms
    cols = [func.sum(case((ms <= b * 1000, 1), else_=0)) for b in BUCKETS_S]
    q = (
        select(group_col, func.count(), func.sum(ms), *cols)
        .join(Generation, Generation.id == GenerationStage.generation_id)
        .where(ms.is_not(None), *where)
        .group_by(group_col)
    )
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for key, count, total, *le in session.execute(q):
        buckets = [(str(float(b)), int(n or 0)) for b, n in zip(BUCKETS_S, le, strict=True)]
        fam.add_metric([str(key)], buckets + [("+Inf", int(count))], float(total or 0) / 1000.0)
    return fam


class DatabaseCollector:
    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        try:
            with self.services.db.session() as session:
                yield from self._generations(session)
                yield from self._durations(session)
                yield from self._outcomes(session)
            up = 1
        except Exception as exc:  # the database is down: say so, keep serving the rest
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            up = 0
        yield GaugeMetricFamily("bff_database_up", "1 if the database answered this scrape", up)
        yield from self._queues()

    def _generations(self, session) -> Iterator[Metric]:
        gens = GaugeMetricFamily(
            "bff_generations", "Generations by status and provider", labels=["status", "provider"]
        )
        for status, provider, n in session.execute(
            select(Generation.status, Generation.provider, func.count()).group_by(
                Generation.status, Generation.provider
            )
        ):
            gens.add_metric([status, provider or "none"], n)
        yield gens
        cost = CounterMetricFamily(
            "bff_generation_cost_dollars", "What stages paid providers", labels=["provider"]
        )
        paid = {pid: 0.0 for pid in session.scalars(select(Provider.id))}  # 0, not absent
        spent = select(Charge.provider, func.sum(Charge.amount)).group_by(Charge.provider)
        paid.update((provider, float(usd or 0)) for provider, usd in session.execute(spent))
        for provider, usd in paid.items():
            cost.add_metric([provider], usd)
        yield cost

    def _durations(self, session) -> Iterator[Metric]:
        yield _histograms(
            session,
            GenerationStage.name,
            [GenerationStage.status.in_(("completed", "skipped"))],
            "bff_stage_duration_seconds",
            "Duration of finished stages",
            "stage",
        )
        yield _histograms(
            session,
            Generation.provider,
            [GenerationStage.name == "generate", Generation.provider.is_not(None)],
            "bff_provider_latency_seconds",
            "Duration of the generate stage (the provider call) by provider",
            "provider",
        )
        retries = CounterMetricFamily(
            "bff_stage_retries", "Stage attempts beyond the first", labels=["stage"]
        )
        for name, extra in session.execute(
            select(GenerationStage.name, func.sum(GenerationStage.attempts - 1))
            .where(GenerationStage.attempts > 1)
            .group_by(GenerationStage.name)
        ):
            retries.add_metric([name], int(extra or 0))
        yield retries

    def _outcomes(self, session) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "bff_provider_calls", "Provider outcomes", labels=["provider", "outcome"]
        )
        for pid, ok, bad in session.execute(
            select(Provider.id, Provider.success_count, Provider.failure_count)
        ):
            calls.add_metric([pid, "success"], ok)
            calls.add_metric([pid, "error"], bad)
        yield calls
        hooks = GaugeMetricFamily(
            "bff_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        hook_attempts = CounterMetricFamily(
            "bff_webhook_attempts", "Webhook delivery attempts", labels=["status"]
        )
        for status, n, tries in session.execute(
            select(
                WebhookDelivery.status, func.count(), func.sum(WebhookDelivery.attempts)
            ).group_by(WebhookDelivery.status)
        ):
            hooks.add_metric([status], n)
            hook_attempts.add_metric([status], int(tries or 0))
        yield hooks
        yield hook_attempts
        yield CounterMetricFamily(
            "bff_storage_orphans_removed",
            "Objects without a row the storage sweep removed",
            sum(session.scalars(select(MaintenanceState.removed))),
        )

    def _queues(self) -> Iterator[Metric]:
        """Messages waiting per queue, as the broker counts them (a passive declare)."""
        fam = GaugeMetricFamily("bff_queue_length", "Messages waiting in a queue", labels=["queue"])
        try:
            with self.services.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                for q in QUEUES:
                    try:
                        n = conn.default_channel.queue_declare(queue=q, passive=True).message_count
                    except conn.channel_errors:  # never declared: no worker has consumed it yet
                        n = 0
                    fam.add_metric([q], n)
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", type(exc).__name__)
            return
        yield fam


@bp.get("/metrics")
def metrics() -> Response:
    from app.api.common import services

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(services()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
