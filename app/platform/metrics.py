"""GET /metrics: Prometheus metrics computed at scrape time.

Why from the database and Redis rather than in-process counters: the work
happens in several gunicorn workers and Celery processes (prefork children,
threads, other machines). Postgres already holds every generation, stage
timing, retry and cost, and Redis holds the queues, so one scrape of any web
process gives the same, complete numbers: no multiprocess directory, no
double counting, nothing lost when a process restarts. Each scrape is a few
aggregate queries over indexed tables.

Counters here only go down when rows are deleted (a user deleting a job).
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

from app.domain.models import Generation, GenerationStage, Provider
from app.platform.redis import client
from app.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

# Stage and provider latencies span milliseconds (planning) to minutes (images).
BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)
QUEUES = ("pipeline", "generation")
# kombu stores priority levels 1-9 of a Redis queue under "<queue>\x06\x16<n>".
PRIORITY_SEP = "\x06\x16"

bp = Blueprint("metrics", __name__)


def _histograms(session, group_col, where, name: str, doc: str, label: str) -> Metric:
    cols = [
        func.sum(case((GenerationStage.duration_ms <= b, 1), else_=0)).label(f"le{b}")
        for b in BUCKETS_MS
    ]
    q = (
        select(group_col, func.count(), func.sum(GenerationStage.duration_ms), *cols)
        .join(Generation, Generation.id == GenerationStage.generation_id)
        .where(GenerationStage.duration_ms.is_not(None), *where)
        .group_by(group_col)
    )
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for row in session.execute(q):
        key, count, total = row[0], int(row[1]), float(row[2] or 0)
        buckets = [(str(float(b)), int(row[3 + i] or 0)) for i, b in enumerate(BUCKETS_MS)]
        fam.add_metric([str(key)], buckets + [("+Inf", count)], total / 1000.0)
    return fam


class DatabaseCollector:
    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        try:
            with self.services.db.session() as session:
                yield from self._from_db(session)
            up = 1
        except Exception as exc:  # the database is down: say so, keep serving the rest
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            up = 0
        g = GaugeMetricFamily("bff_database_up", "1 if the database answered this scrape")
        g.add_metric([], up)
        yield g
        yield from self._queues()

    def _from_db(self, session) -> Iterator[Metric]:
        gens = GaugeMetricFamily(
            "bff_generations", "Generations by status and provider", labels=["status", "provider"]
        )
        cost = CounterMetricFamily(
            "bff_generation_cost_dollars", "Provider cost of generations", labels=["provider"]
        )
        per_provider_cost: dict[str, float] = {}
        for status, provider, n, spent in session.execute(
            select(
                Generation.status, Generation.provider, func.count(), func.sum(Generation.cost)
            ).group_by(Generation.status, Generation.provider)
        ):
            p = provider or "none"
            gens.add_metric([status, p], n)
            per_provider_cost[p] = per_provider_cost.get(p, 0.0) + float(spent or 0)
        for p, spent in per_provider_cost.items():
            cost.add_metric([p], spent)
        yield gens
        yield cost

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

    def _queues(self) -> Iterator[Metric]:
        url = self.services.settings.broker_url
        if not url.startswith(("redis://", "rediss://")):
            return
        fam = GaugeMetricFamily("bff_queue_length", "Messages waiting in a queue", labels=["queue"])
        try:
            r = client(url)
            for q in QUEUES:
                keys = [q] + [f"{q}{PRIORITY_SEP}{n}" for n in range(1, 10)]
                with r.pipeline() as pipe:
                    for k in keys:
                        pipe.llen(k)
                    fam.add_metric([q], sum(pipe.execute()))
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
