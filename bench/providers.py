"""Benchmark 2: waiting on providers.

200 generations against the fake Replicate server (``tests.fakes.replicate``,
Replicate's wire format) at 2 s per prediction, one ``generator`` process
with a small thread pool, and a global provider rate limit. The ideal
makespan is set by the rate limit: N / rate + one prediction's latency. The
naive design (a worker held for each whole prediction) needs about
N x latency / threads. Target: makespan <= 1.25x ideal.

Needs ``app/providers/replicate.py`` and ``tests/fakes/replicate.py`` (issue
#3); skipped, saying so, where they do not exist yet.
"""

from __future__ import annotations

import logging
import os

from .harness import ROOT, Unavailable, celery_workers, services, table
from .load import Listener, drive
from .overhead import our_submitter

N = int(os.environ.get("BENCH_PROVIDERS_N", "200"))
LATENCY = float(os.environ.get("BENCH_PROVIDER_LATENCY", "2"))
RATE = float(os.environ.get("BENCH_PROVIDER_RATE", "8"))  # predictions created per second
# Few threads on purpose: holding one per prediction would cap us at
# THREADS / LATENCY = 1 generation/s, far below the rate limit.
THREADS = int(os.environ.get("BENCH_PROVIDER_THREADS", "2"))
# How long one run of the generate stage polls before freeing its thread.
POLL = os.environ.get("BENCH_PROVIDER_POLL_SECONDS", "0.25")


def run() -> list[str]:
    for path in ("app/providers/replicate.py", "tests/fakes/replicate.py"):
        if not (ROOT / path).exists():
            raise Unavailable(f"{path} (the Replicate adapter and its fake, issue #3)")
    from tests.fakes.replicate import FakeReplicate

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log

    with (
        FakeReplicate() as fake,
        services(
            REPLICATE_API_TOKEN="r8_bench",
            BFF_DEFAULT_PROVIDER="google-imagen",
            BFF_RATE_LIMIT_GOOGLE_IMAGEN=f"{RATE:g}/1",
            BFF_PROVIDER_POLL_SECONDS=POLL,
        ) as env,
    ):
        fake.latency = LATENCY
        env.vars["REPLICATE_BASE_URL"] = fake.url
        submit = our_submitter(env, provider="google-imagen")[0]
        workers = celery_workers(env, "workers", generator_concurrency=THREADS)
        listener = Listener(env.vars["REDIS_URL"])
        try:
            result = drive(listener, submit, N, inflight=N, timeout=1800)
        finally:
            listener.close()
            for w in workers:
                env.stop(w)
    ideal = N / RATE + LATENCY
    naive = N * LATENCY / THREADS
    ratio = result.makespan / ideal
    return [
        table(
            f"Waiting on a {LATENCY:g} s provider: {N} generations, rate limit {RATE:g}/s, "
            f"1 generator process x {THREADS} threads, polling {POLL} s per run "
            "(target <= 1.25x ideal)",
            ["", "makespan s", "vs ideal"],
            [
                ["ideal (N / rate + latency)", ideal, "1.00x"],
                ["naive (N x latency / threads)", naive, f"{naive / ideal:.2f}x"],
                [
                    f"ours ({result.failed} failed, {fake.creates} predictions created)",
                    result.makespan,
                    f"{ratio:.2f}x {'ok' if ratio <= 1.25 else 'OVER'}",
                ],
            ],
        )
    ]
