"""Benchmark 5: steady memory.

The worker and generator process trees' resident memory (from /proc, each
process and its prefork children) after a warm-up, and again after 1,000
more generations through our chain; the bare Celery chain's workers
(``bench.bare``), run the same way, are the baseline. Target: ours grows by
less than 10 %.
"""

from __future__ import annotations

import os

from .harness import Env, celery_workers, services, table, tree_rss_kb
from .load import Listener, drive
from .overhead import INFLIGHT, bare_submitter, our_submitter

N = int(os.environ.get("BENCH_MEMORY_N", "1000"))
WARMUP = 100


def measure(env: Env, which: str) -> list[list[object]]:
    env.flush_redis()
    submit = our_submitter(env)[0] if which == "ours" else bare_submitter(env)
    workers = celery_workers(env, "workers" if which == "ours" else "bench.bare")
    listener = Listener(env.vars["REDIS_URL"])
    try:
        drive(listener, submit, WARMUP, INFLIGHT)
        before = {w.name.split("-")[0]: tree_rss_kb(w.pid) for w in workers}
        run = drive(listener, submit, N, INFLIGHT, timeout=1800)
        after = {w.name.split("-")[0]: tree_rss_kb(w.pid) for w in workers}
    finally:
        listener.close()
        for w in workers:
            env.stop(w)
    rows = []
    for name in before:
        growth = (after[name] - before[name]) / before[name]
        rows.append(
            [
                which,
                name,
                before[name] / 1024,
                after[name] / 1024,
                f"{100 * growth:+.1f} %",
                run.failed,
            ]
        )
    total_b, total_a = sum(before.values()), sum(after.values())
    growth = (total_a - total_b) / total_b
    rows.append(
        [
            which,
            "both",
            total_b / 1024,
            total_a / 1024,
            f"{100 * growth:+.1f} %",
            "ok" if which == "bare" or growth < 0.10 else "OVER 10 %",
        ]
    )
    return rows


def run() -> list[str]:
    with services() as env:
        rows = measure(env, "bare") + measure(env, "ours")
    return [
        table(
            f"Worker RSS: after {WARMUP} warm-up generations and after {N} more "
            "(target: ours grows < 10 %)",
            ["chain", "process tree", "warm MiB", "end MiB", "growth", "failed / verdict"],
            rows,
        )
    ]
