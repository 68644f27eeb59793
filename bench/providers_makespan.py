"""Makespan of N generations through a slow fake provider on ONE generator
process, for the waiting design (create, save the id, poll briefly, free the
thread, resume later) against holding the thread for the whole prediction
(a poll longer than the prediction), at two generator pool sizes.

    .venv/bin/python bench/providers_makespan.py [--n 50] [--latency 2]

Needs PostgreSQL and Redis on 127.0.0.1. Runs the Procfile's web, worker and
generator (one process; the pipeline worker with 4) against the fake
Replicate server (in this process), as the ``providers`` benchmark does,
without its rate limit; local-disk storage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, too

from bench.harness import services  # noqa: E402
from bench.load import Listener, drive  # noqa: E402
from bench.overhead import SUBMITTERS, system  # noqa: E402
from bench.providers import generate_window  # noqa: E402


def run(n: int, latency: float, poll_seconds: float, concurrency: int) -> dict:
    from tests.fakes.replicate import FakeReplicate

    with (
        FakeReplicate() as fake,
        services(
            REPLICATE_API_TOKEN="r8_bench",
            BFF_PROVIDER_POLL_SECONDS=str(poll_seconds),
            BFF_RATE_LIMIT_GOOGLE_IMAGEN="1000/60",
        ) as env,
    ):
        fake.latency = latency
        env.vars["REPLICATE_BASE_URL"] = fake.url
        with (
            system(env, "ours", "google-imagen", concurrency, worker_concurrency=4) as sysm,
            Listener(env.vars["REDIS_URL"]) as listener,
        ):
            result = drive(listener, sysm.submit, n, n, SUBMITTERS, timeout=1800)
        window = generate_window(env.vars["DATABASE_URL"], list(result.submitted))
        return {
            "n": n,
            "latency_s": latency,
            "poll_s": poll_seconds,
            "generator_concurrency": concurrency,
            "makespan_s": round(result.makespan, 1),
            "generate_window_s": round(window, 1),
            "completed": len(result.done) - result.failed,
            "creates": fake.creates,
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/providers_makespan.py")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--latency", type=float, default=2.0)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log
    for concurrency in (32, 4):
        for poll, label in ((0.5, "waiting (frees the thread)"), (120.0, "holding")):
            result = run(args.n, args.latency, poll, concurrency)
            print(f"{label:28s} {result}", flush=True)


if __name__ == "__main__":
    main()
