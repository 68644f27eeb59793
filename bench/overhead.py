"""Benchmark 1: orchestration overhead.

Our seven-stage chain (the real ``worker`` and ``generator`` processes, the
``local`` provider drawing ~20 px images, PostgreSQL, Redis) against a bare
chain of seven no-op Celery tasks (``bench.bare``) with the same broker,
queues, Celery settings, worker counts and pools. Both are driven closed-loop
with the same number of generations in flight; each generation is timed from
submit to its ``done`` event.

Submitting ours does what the API's submit does after validation (insert the
generation and its stage rows, commit, dispatch, mark dispatched) in this
process; the baseline only dispatches. HTTP is benchmark 3's subject.
"""

from __future__ import annotations

import os
import statistics

from .harness import CpuMeter, Env, celery_workers, descendants, ratio, services, table
from .load import Listener, Run, drive

N = int(os.environ.get("BENCH_OVERHEAD_N", "300"))
WARMUP = 20
INFLIGHT = int(os.environ.get("BENCH_INFLIGHT", "16"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "2"))


def our_submitter(env: Env, provider: str = "local"):
    """Returns (submit(i) -> generation id, flask app)."""
    from app.submissions import SubmitRow, insert_submitted

    from app import create_app
    from app.api.auth import create_user
    from app.api.schemas import GenerationSettings
    from app.domain.models import new_id, utcnow
    from app.platform.queue import dispatch

    app = create_app(env.vars)
    s = app.extensions["bff"]
    with s.db.session() as session:
        user, _ = create_user(session, "bench")
        user_id = user.id
    settings = GenerationSettings(provider=provider).model_dump()

    def submit(i: int) -> str:
        # What app.api.submit._submit does after validation on PostgreSQL: the
        # one-statement insert (with its checks), then the chain.
        gid = new_id("gen")
        row = SubmitRow(
            gid, user_id, "prompt", settings, utcnow(), prompt=f"emerald silk slip dress, look {i}"
        )
        inserted = insert_submitted(s.db, row, s.settings.submit_rate_limit)
        if not inserted or not dispatch(s.celery, gid):
            raise RuntimeError("submit refused")
        return gid

    return submit, app


def bare_submitter(env: Env):
    from app.domain.models import new_id
    from app.platform.queue import dispatch

    os.environ.update({k: v for k, v in env.vars.items() if k in ("REDIS_URL", "BFF_VAR_DIR")})
    from . import bare

    def submit(i: int) -> str:
        gid = new_id("gen")
        if not dispatch(bare.app, gid):
            raise RuntimeError("broker refused the baseline chain")
        return gid

    return submit


def cpu_meter(env: Env, workers) -> CpuMeter:
    """CPU by component: each worker's process tree, this (submitting)
    process, the Postgres backends of our scratch database, Redis."""
    dbname = env.vars["DATABASE_URL"].rsplit("/", 1)[1]
    groups = {}
    for w in workers:
        tree = descendants(w.pid)
        groups[w.name.split("-")[0]] = lambda pid, cmd, t=tree: pid in t
    me = os.getpid()
    groups["submitter (bench)"] = lambda pid, cmd: pid == me
    groups["postgres"] = lambda pid, cmd: cmd.startswith("postgres:") and f" {dbname} " in cmd
    groups["redis"] = lambda pid, cmd: cmd.startswith("redis-server")
    return CpuMeter(groups)


def measure(env: Env, which: str, n: int, warmup: int = WARMUP) -> Run:
    env.flush_redis()
    submit = our_submitter(env)[0] if which == "ours" else bare_submitter(env)
    workers = celery_workers(env, "workers" if which == "ours" else "bench.bare")
    listener = Listener(env.vars["REDIS_URL"])
    try:
        drive(listener, submit, warmup, INFLIGHT)
        meter = cpu_meter(env, workers)
        meter.start()
        result = drive(listener, submit, n, INFLIGHT)
        result.cpu = meter.stop()
        return result
    finally:
        listener.close()
        for w in workers:
            env.stop(w)


def run() -> list[str]:
    pairs: list[tuple[Run, Run]] = []
    with services() as env:
        for _ in range(REPEAT):  # alternate, so drift on a shared machine hits both
            pairs.append((measure(env, "bare", N), measure(env, "ours", N)))
    rows = []
    for i, (base, ours) in enumerate(pairs, 1):
        rows.append(
            [
                i,
                "bare 7-task Celery chain",
                base.throughput,
                base.p(50),
                base.p(99),
                base.failed,
                "",
            ]
        )
        rows.append(
            [
                i,
                "ours (7 stages, local provider)",
                ours.throughput,
                ours.p(50),
                ours.p(99),
                ours.failed,
                ratio(ours.throughput, base.throughput),
            ]
        )

    def med(f) -> str:
        return f"{statistics.median(f(b, o) for b, o in pairs):.2f}x"

    base, ours = pairs[-1]
    return [
        table(
            f"Orchestration overhead: {N} generations, {INFLIGHT} in flight, {REPEAT} rounds "
            "(target: ours >= 0.5x the bare chain's throughput)",
            ["round", "chain", "generations/s", "p50 s", "p99 s", "failed", "throughput vs bare"],
            rows,
        ),
        table(
            "Ratios (ours / bare), median over rounds",
            ["throughput", "p50 latency", "p99 latency", "CPU per generation (all components)"],
            [
                [
                    med(lambda b, o: o.throughput / b.throughput),
                    med(lambda b, o: o.p(50) / b.p(50)),
                    med(lambda b, o: o.p(99) / b.p(99)),
                    med(lambda b, o: sum(o.cpu.values()) / sum(b.cpu.values())),
                ]
            ],
        ),
        table(
            f"CPU milliseconds per generation by component, round {REPEAT} "
            "(Redis is shared with other users of the server)",
            ["component", "bare", "ours", "ours / bare"],
            [
                [k, 1000 * base.cpu.get(k, 0) / N, 1000 * v / N, ratio(v, base.cpu.get(k, 0))]
                for k, v in ours.cpu.items()
            ],
        ),
    ]
