"""GET /metrics: Prometheus metrics computed at scrape time.

From the database and the broker rather than in-process counters: the work
happens in many gunicorn and Celery processes, and Postgres already holds
every generation, stage timing, retry and cost, so one scrape of any web
process gives the same complete numbers (no multiprocess directory, nothing
lost on restart). The counters over all history (stage durations, retries,
the cost from the payments' ledger) are rolled up by the maintenance beat
(``metric_rollup``), so a scrape does not read every stage ever run.
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
from sqlalchemy import func, select

from app.domain.bookkeeping import MaintenanceState, Provider
from app.domain.models import Generation
from app.platform import metric_rollup as rollup
from app.platform.metric_rollup import Tally, totals
from app.platform.schema import SchemaOutOfDate, check_schema
from app.providers.catalog import CATALOGUE
from app.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

QUEUES = ("pipeline", "generation")

bp = Blueprint("metrics", __name__)


def _histogram(series: list[tuple[str, Tally]], name: str, doc: str, label: str) -> Metric:
    """Durations (ms) as a Prometheus histogram in seconds."""
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for key, t in series:
        buckets = [(str(float(b)), n) for b, n in zip(rollup.BUCKETS_S, t.buckets, strict=True)]
        fam.add_metric([key], buckets + [("+Inf", t.count)], t.total / 1000.0)
    return fam


class DatabaseCollector:
    def __init__(self, services: Any, failures: Any) -> None:
        self.services, self.failures = services, failures  # (a scrape every 15 s: said once)

    def collect(self) -> Iterator[Metric]:
        try:
            # Up means what /health's database check means: answering, and
            # migrated (the queries below read the head's tables).
            with self.services.db.engine.connect() as conn:
                check_schema(conn)
            with self.services.db.session() as session:
                yield from self._generations(session)
                yield from self._history(session)
                yield from self._outcomes(session)
            up, why = 1, None
        except SchemaOutOfDate as exc:
            up, why = 0, str(exc)
        except Exception as exc:  # the database is down: say so, keep serving the rest
            up, why = 0, f"unavailable: {type(exc).__name__}"
        self.failures.note("database", why)
        yield GaugeMetricFamily(
            "bff_database_up", "1 if the database answered this scrape and is migrated", up
        )
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

    def _history(self, session) -> Iterator[Metric]:
        """The counters over all history (``metric_rollup``)."""
        tallies = totals(session)

        def series(family: str) -> list[tuple[str, Tally]]:
            return sorted((label, t) for (f, label), t in tallies.items() if f == family)

        yield _histogram(
            series(rollup.STAGES),
            "bff_stage_duration_seconds",
            "Duration of finished stages",
            "stage",
        )
        yield _histogram(
            series(rollup.PROVIDERS),
            "bff_provider_latency_seconds",
            "Duration of the generate stage (the provider call) by provider",
            "provider",
        )
        retries = CounterMetricFamily(
            "bff_stage_retries", "Stage attempts beyond the first", labels=["stage"]
        )
        for name, tally in series(rollup.RETRIES):
            retries.add_metric([name], tally.count)
        yield retries
        cost = CounterMetricFamily(
            "bff_generation_cost_dollars", "What stages paid providers", labels=["provider"]
        )
        # 0, not absent: every model of the catalogue (the providers table
        # holds a model only once something recorded an outcome for it).
        paid = dict.fromkeys([*CATALOGUE, *session.scalars(select(Provider.id))], 0.0)
        paid.update((provider, tally.total) for provider, tally in series(rollup.COST))
        for provider, usd in sorted(paid.items()):
            cost.add_metric([provider], usd)
        yield cost

    def _outcomes(self, session) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "bff_provider_calls", "Provider outcomes", labels=["provider", "outcome"]
        )
        outcomes = dict.fromkeys(CATALOGUE, (0, 0))  # 0, not absent (as the cost)
        outcomes.update(
            (pid, (ok, bad))
            for pid, ok, bad in session.execute(
                select(Provider.id, Provider.success_count, Provider.failure_count)
            )
        )
        for pid, (ok, bad) in outcomes.items():
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
        states = session.execute(
            select(MaintenanceState.name, MaintenanceState.removed, MaintenanceState.updated_at)
        ).all()
        yield CounterMetricFamily(
            "bff_storage_orphans_removed",
            "Objects without a row the storage sweep removed",
            sum(removed or 0 for _, removed, _ in states),
        )
        last = GaugeMetricFamily(
            "bff_maintenance_last_run_timestamp_seconds",
            "When beat's job last finished a run (Unix time): is beat alive?",
            labels=["job"],
        )
        for name, _, at in states:
            if at is not None:
                last.add_metric([name], at.timestamp())
        yield last

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
    from app.api.health import failures

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(services(), failures("metrics")))
    # content_type, not mimetype: Flask would add a second charset, which a
    # strict media-type parser (Go's, Prometheus') refuses.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
