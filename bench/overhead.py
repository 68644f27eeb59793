"""Orchestration overhead: ours end to end against a bare seven-task chain.

Ours: the Procfile's ``web`` (gunicorn, ``gunicorn.conf.py``), ``worker`` and
``generator`` on PostgreSQL and Redis, the ``local`` provider drawing ~20 px
images; each generation is submitted with ``POST /api/generate/from-prompt``
over HTTP. The baseline (``bench.bare``): seven no-op tasks sent with
``chain(...).apply_async()`` from the driver, run by the same ``worker`` and
``generator`` command lines on the same broker and queues (no HTTP: the issue
defines the baseline so). One driver for both (``bench.load.drive``): the
same submitting threads, the same number in flight, each job timed from its
submit to its ``done`` message.

CPU per generation is counted by component from /proc: the submit (ours:
the gunicorn tree; the baseline: the driver's threads inside
``apply_async``), each worker's process tree, our scratch database's
Postgres backends and Redis. The driver's own work (HTTP client, listener)
is shown apart and counted for neither.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from tests.support import procs as P

from . import bare
from .harness import (
    GENERATOR_CONCURRENCY,
    WORKER_CONCURRENCY,
    Env,
    api_key,
    celery_workers,
    ratio,
    services,
    table,
    web,
)
from .load import Listener, Run, drive
from .procstat import CpuMeter, descendants

N = int(os.environ.get("BENCH_OVERHEAD_N", "300"))
WARMUP = 30
INFLIGHT = int(os.environ.get("BENCH_INFLIGHT", "16"))
SUBMITTERS = int(os.environ.get("BENCH_SUBMITTERS", "4"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "2"))
FLOOR = 0.4  # ours / bare throughput, from the issue
COMPONENTS = ("submit", "worker", "generator", "postgres", "redis")


def http_submitter(base: str, key: str, provider: str = "local") -> Callable[[int], str]:
    """Submit as a client does: one keep-alive session per submitting thread."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {key}"}
    settings = {"provider": provider}

    def submit(i: int) -> str:
        if not hasattr(local, "http"):
            local.http = requests.Session()
            # gunicorn closes a keep-alive connection idle for 2 s, and a submitter
            # can wait that long for a slot: a POST that meets a connection closed
            # under it (never read by the server) is sent again, once.
            retry = Retry(total=1, allowed_methods=None, status_forcelist=())
            local.http.mount("http://", HTTPAdapter(max_retries=retry))
        resp = local.http.post(
            f"{base}/api/generate/from-prompt",
            json={"prompt": f"emerald silk slip dress, look {i}", "settings": settings},
            headers=headers,
            timeout=30,
        )
        if resp.status_code != 202:
            raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()["id"]

    return submit


@dataclass
class System:
    which: str  # "ours" or "bare"
    submit: Callable[[int], str]
    procs: dict[str, P.Process]  # web (ours only), worker, generator
    base: str | None = None  # ours: the API's URL


@contextmanager
def system(
    env: Env,
    which: str,
    provider: str = "local",
    generator_concurrency: int = GENERATOR_CONCURRENCY,
    worker_concurrency: int = WORKER_CONCURRENCY,
    public_web: bool = False,
) -> Iterator[System]:
    """Ours (web, worker, generator) or the bare chain (worker, generator),
    started and ready, with the submit the driver calls; stopped on exit.
    ``public_web``: the workers know web's URL (Replicate webhooks go there)."""
    env.flush_redis()
    procs: dict[str, P.Process] = {}
    base = None
    try:
        if which == "ours":
            procs["web"], base = web(env)
            submit = http_submitter(base, api_key(env), provider)
            if public_web:
                env.vars["BFF_PUBLIC_URL"] = base
        else:
            submit = bare.submitter(env.vars)
        app = "workers" if which == "ours" else "bench.bare"
        for proc in celery_workers(env, app, generator_concurrency, worker_concurrency):
            procs[proc.name.split("-")[0]] = proc
        yield System(which, submit, procs, base)
    finally:
        for proc in procs.values():
            env.stop(proc)


def cpu_meter(env: Env, sysm: System) -> CpuMeter:
    """Each process tree, this (driving) process, our database's Postgres
    backends, Redis (shared with any other user of the server)."""
    dbname = env.vars["DATABASE_URL"].rsplit("/", 1)[1]
    groups = {}
    for name, proc in sysm.procs.items():
        groups[name] = lambda pid, cmd, t=descendants(proc.pid): pid in t
    me = os.getpid()
    groups["driver"] = lambda pid, cmd: pid == me
    groups["postgres"] = lambda pid, cmd: cmd.startswith("postgres:") and f" {dbname} " in cmd
    groups["redis"] = lambda pid, cmd: cmd.startswith("redis-server")
    return CpuMeter(groups)


def components(run: Run, which: str) -> dict[str, float]:
    """CPU seconds by component; ``driver`` is the benchmark's own, not the system's."""
    cpu = dict(run.cpu)
    if which == "ours":
        cpu["submit"] = cpu.pop("web")
    else:  # the baseline's submit runs in the driver's threads
        cpu["submit"] = run.submit_cpu
        cpu["driver"] -= run.submit_cpu
    cpu["system"] = sum(cpu.get(k, 0.0) for k in COMPONENTS)
    return cpu


def measure(env: Env, which: str, n: int = N) -> Run:
    with system(env, which) as sysm, Listener(env.vars["REDIS_URL"]) as listener:
        drive(listener, sysm.submit, WARMUP, INFLIGHT, SUBMITTERS)
        meter = cpu_meter(env, sysm)
        meter.start()
        result = drive(listener, sysm.submit, n, INFLIGHT, SUBMITTERS)
        result.cpu = meter.stop()
        result.cpu = components(result, which)
        return result


def run() -> list[str]:
    pairs: list[tuple[Run, Run]] = []
    with services() as env:
        for i in range(REPEAT):  # alternate which goes first: drift hits both
            order = ("bare", "ours") if i % 2 == 0 else ("ours", "bare")
            runs = {which: measure(env, which) for which in order}
            pairs.append((runs["bare"], runs["ours"]))
    return [_rounds(pairs), *_summary(pairs)]


def _rounds(pairs: list[tuple[Run, Run]]) -> str:
    rows = []
    for i, (base, ours) in enumerate(pairs, 1):
        for label, r in (("bare 7-task chain", base), ("ours over HTTP", ours)):
            vs = ratio(r.throughput, base.throughput) if r is ours else ""
            rows.append([i, label, r.throughput, 1000 * r.p(50), 1000 * r.p(99), r.failed, vs])
    return table(
        f"Orchestration: {N} jobs a round after {WARMUP} warm-up, {INFLIGHT} in flight, "
        f"{SUBMITTERS} submitting threads, {len(pairs)} rounds",
        ["round", "chain", "jobs/s", "p50 ms", "p99 ms", "failed", "throughput vs bare"],
        rows,
    )


def _per_gen(r: Run, k: str) -> float:
    return 1000 * r.cpu.get(k, 0.0) / len(r.done)


def _summary(pairs: list[tuple[Run, Run]]) -> list[str]:
    def med(f: Callable[[Run, Run], float]) -> float:
        return statistics.median(f(b, o) for b, o in pairs)

    tput = med(lambda b, o: o.throughput / b.throughput)
    ratios = [
        f"{tput:.2f}x",
        f">= {FLOOR}x",
        "ok" if tput >= FLOOR else "UNDER",
        f"{med(lambda b, o: o.p(50) / b.p(50)):.2f}x",
        f"{med(lambda b, o: o.p(99) / b.p(99)):.2f}x",
        f"{med(lambda b, o: _per_gen(o, 'system') / _per_gen(b, 'system')):.2f}x",
    ]
    cpu = []
    for k in (*COMPONENTS, "system", "driver"):
        base = med(lambda b, o, k=k: _per_gen(b, k))
        ours = med(lambda b, o, k=k: _per_gen(o, k))
        cpu.append([k, base, ours, ratio(ours, base)])
    return [
        table(
            "Ours / bare, median over rounds",
            ["throughput", "floor", "", "p50 latency", "p99 latency", "CPU per generation"],
            [ratios],
        ),
        table(
            "CPU ms per generation by component, median over rounds (submit: ours is the "
            "gunicorn tree, bare the driver's apply_async; system = the five above; the driver "
            "(HTTP client, listener) is counted for neither)",
            ["component", "bare", "ours", "ours / bare"],
            cpu,
        ),
    ]
