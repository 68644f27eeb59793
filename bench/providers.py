"""Waiting on a slow provider: 200 generations against the fake Replicate
server (``tests.fakes.replicate``, Replicate's wire format) at 2 s per
prediction, one ``generator`` process with a small thread pool, and a global
provider rate limit. Ours runs end to end as in ``overhead`` (submitted over
HTTP, all at once). The ideal makespan is set by the rate limit: N / rate +
one prediction's latency. A design that holds a thread for each whole
prediction needs about N x latency / threads. Floor: makespan <= 1.1x ideal.
"""

from __future__ import annotations

import logging
import os

from .harness import services, table
from .load import Listener, drive
from .overhead import SUBMITTERS, system

N = int(os.environ.get("BENCH_PROVIDERS_N", "200"))
LATENCY = float(os.environ.get("BENCH_PROVIDER_LATENCY", "2"))
RATE = float(os.environ.get("BENCH_PROVIDER_RATE", "8"))  # predictions created per second
# Few threads on purpose: holding one per prediction would cap us at
# THREADS / LATENCY = 1 generation/s, far below the rate limit.
THREADS = int(os.environ.get("BENCH_PROVIDER_THREADS", "2"))
# Seconds between looks at a running prediction (a countdown, not a sleep): a
# quarter of the service's 2 s default, so a look's cost shows as well as waiting's.
POLL = os.environ.get("BENCH_PROVIDER_POLL_SECONDS", "0.5")
FLOOR = 1.1


def generate_window(url: str, ids: list[str]) -> float:
    """Seconds from the first generate stage's start to the last one's finish."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return float(
                conn.execute(
                    text(
                        "SELECT EXTRACT(EPOCH FROM MAX(finished_at) - MIN(started_at)) "
                        "FROM generation_stages "
                        "WHERE name = 'generate' AND generation_id = ANY(:ids)"
                    ),
                    {"ids": ids},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _measure(webhooks: bool) -> tuple[object, float, int, int]:
    """One run: (drive result, generate window, predictions created, seconds
    between looks). With webhooks the looks are the service's default (10 s):
    Replicate's call is what wakes each stage."""
    from tests.fakes.replicate import FakeReplicate

    overrides = {} if webhooks else {"BFF_PROVIDER_POLL_SECONDS": POLL}
    with (
        FakeReplicate() as fake,
        services(
            REPLICATE_API_TOKEN="r8_bench",
            BFF_DEFAULT_PROVIDER="google-imagen",
            BFF_RATE_LIMIT_GOOGLE_IMAGEN=f"{RATE:g}/1",
            BFF_REPLICATE_WEBHOOKS="on" if webhooks else "off",
            **overrides,
        ) as env,
    ):
        fake.latency = LATENCY
        env.vars["REPLICATE_BASE_URL"] = fake.url
        with (
            system(
                env, "ours", "google-imagen", generator_concurrency=THREADS, public_web=webhooks
            ) as sysm,
            Listener(env.vars["REDIS_URL"]) as listener,
        ):
            result = drive(listener, sysm.submit, N, N, SUBMITTERS, timeout=1800)
        window = generate_window(env.vars["DATABASE_URL"], list(result.submitted))
        return result, window, fake.creates, fake.webhook_answers.count(200)


def run() -> list[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log
    ideal = N / RATE + LATENCY
    naive = N * LATENCY / THREADS
    rows = [
        ["ideal (N / rate + latency)", ideal, "1.00x"],
        ["holding a thread per prediction (N x latency / threads)", naive, f"{naive / ideal:.2f}x"],
    ]
    for webhooks in (False, True):
        result, window, creates, delivered = _measure(webhooks)
        ratio = result.makespan / ideal
        how = f"webhooks ({delivered} delivered)" if webhooks else f"a look every {POLL} s"
        rows.append(
            [
                f"ours, {how} ({result.failed} failed, {creates} predictions created)",
                result.makespan,
                f"{ratio:.2f}x {'ok' if ratio <= FLOOR else 'OVER'}",
            ]
        )
        rows.append(["  of which the generate stages' window", window, f"{window / ideal:.2f}x"])
    return [
        table(
            f"Waiting on a {LATENCY:g} s provider: {N} generations, rate limit {RATE:g}/s, "
            f"1 generator process x {THREADS} threads, polling and webhooks "
            f"(floor <= {FLOOR}x ideal)",
            ["", "makespan s", "vs ideal"],
            rows,
        )
    ]
