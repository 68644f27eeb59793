"""Steady memory: the worker and generator process trees' resident memory
(from /proc, each process and its prefork children) after a warm-up, and
again after 1,000 more generations; ours (submitted over HTTP, as in
``overhead``) and the bare chain's (``bench.bare``) run the same way.
Target: ours grows by less than 10 %.
"""

from __future__ import annotations

import os

from .harness import Env, services, table
from .load import Listener, drive
from .overhead import INFLIGHT, SUBMITTERS, system
from .procstat import tree_rss_kb

N = int(os.environ.get("BENCH_MEMORY_N", "1000"))
WARMUP = 100


def measure(env: Env, which: str) -> list[list[object]]:
    with system(env, which) as sysm, Listener(env.vars["REDIS_URL"]) as listener:
        workers = {k: p for k, p in sysm.procs.items() if k != "web"}
        drive(listener, sysm.submit, WARMUP, INFLIGHT, SUBMITTERS)
        before = {name: tree_rss_kb(p.pid) for name, p in workers.items()}
        run = drive(listener, sysm.submit, N, INFLIGHT, SUBMITTERS, timeout=1800)
        after = {name: tree_rss_kb(p.pid) for name, p in workers.items()}
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
    verdict = "" if which == "bare" else ("ok" if growth < 0.10 else "OVER 10 %")
    rows.append([which, "both", total_b / 1024, total_a / 1024, f"{100 * growth:+.1f} %", verdict])
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
