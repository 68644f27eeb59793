"""What every benchmark needs: a scratch PostgreSQL database and our own Redis
db number (the test suite's lease protocol, so benchmarks and test sessions
running side by side never share queues), real processes started the way the
Procfile starts them, percentiles and tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import procs as P
from tests.support.embedded import SERVICE_VARS  # noqa: E402
from tests.support.services import (
    free_port,
    postgres_ok,
    redis_db_number,
    redis_ok,
    release_redis_db,
    scratch_postgres_db,
)

ROOT = P.ROOT

# The developer's shell must not leak into a benchmark's configuration.
CLEAN = SERVICE_VARS

# Worker settings shared by ours and the baselines (override from the shell).
WORKER_CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "2"))
GENERATOR_CONCURRENCY = int(os.environ.get("BENCH_GENERATOR_CONCURRENCY", "8"))


class Unavailable(Exception):
    """A service or tool the benchmark needs is missing: it is skipped, loudly."""


@dataclass
class Env:
    vars: dict[str, str]
    tmp: Path
    redis_db: int
    procs: list[P.Process] = field(default_factory=list)

    def flush_redis(self) -> None:
        import redis

        redis.Redis("127.0.0.1", 6379, db=self.redis_db).flushdb()

    def start(self, name: str, cmd: str, extra: dict[str, str] | None = None) -> P.Process:
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        proc = P.Process(name, cmd, {**self.vars, **(extra or {})}, logs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: P.Process) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)


@contextmanager
def services(**overrides: str) -> Iterator[Env]:
    """A scratch Postgres database at head, a leased Redis db, a temp folder
    for media and logs; everything started here is stopped on exit."""
    if not postgres_ok():
        raise Unavailable("PostgreSQL on 127.0.0.1:5432")
    if not redis_ok():
        raise Unavailable("Redis on 127.0.0.1:6379")
    from app.cli import upgrade_database

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bff-bench-")))
        url = stack.enter_context(scratch_postgres_db())
        upgrade_database(url)
        db_number = redis_db_number()
        stack.callback(release_redis_db, db_number)
        env = Env(
            vars={
                **{k: v for k, v in os.environ.items() if k not in CLEAN},
                "DATABASE_URL": url,
                "REDIS_URL": f"redis://127.0.0.1:6379/{db_number}",
                "STORAGE_BACKEND": "local",
                "BFF_VAR_DIR": str(tmp / "var"),
                "BFF_MEDIA_ROOT": str(tmp / "media"),
                "BFF_DEFAULT_PROVIDER": "local",
                "BFF_SUBMIT_RATE_LIMIT": "0",
                "BFF_LOCAL_RENDER_SCALE": "0.02",
                "BFF_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
                **overrides,
            },
            tmp=tmp,
            redis_db=db_number,
        )
        env.flush_redis()
        try:
            yield env
        finally:
            for proc in list(env.procs):
                proc.stop()
            env.flush_redis()


def celery_workers(
    env: Env,
    app_module: str,
    generator_concurrency: int = GENERATOR_CONCURRENCY,
    worker_concurrency: int = WORKER_CONCURRENCY,
) -> list[P.Process]:
    """The Procfile's ``worker`` and ``generator`` processes for a Celery app
    (``workers`` is ours; a baseline passes its own module), same pools and
    counts, started and ready."""
    pf = P.procfile()
    extra = {
        "WORKER_CONCURRENCY": str(worker_concurrency),
        "GENERATOR_CONCURRENCY": str(generator_concurrency),
    }
    started = []
    for name in ("worker", "generator"):
        cmd = pf[name].replace("-A workers", f"-A {app_module}")
        started.append(env.start(f"{name}-{app_module}", cmd, extra))
    for proc in started:
        P.wait_for(lambda p=proc: P.worker_ready(p), 60, proc.name, procs=started)
    return started


def web(env: Env, app_spec: str | None = None, name: str = "web") -> tuple[P.Process, str]:
    """The Procfile's ``web`` (gunicorn with ``gunicorn.conf.py``) serving our app,
    or ``app_spec`` instead (a baseline), on a free port; returns it and its URL."""
    port = free_port()
    cmd = P.procfile()["web"]
    if app_spec:
        cmd = cmd.replace('"app:create_app()"', app_spec)
    base = f"http://127.0.0.1:{port}"
    proc = env.start(name, cmd, {"PORT": str(port), "BFF_PUBLIC_URL": base})
    P.wait_for(lambda: P.http_ok(base + "/health"), 60, name, procs=[proc])
    return proc, base


def api_key(env: Env, user: str = "bench") -> str:
    """A user's API key, made in the scratch database (set-up, not measured)."""
    from app import create_app
    from app.api.auth import create_user

    db = create_app(env.vars).extensions["bff"].db
    try:
        with db.session() as session:
            return create_user(session, user)[1]
    finally:
        db.engine.dispose()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base else "n/a"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)

    def row(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [f"\n## {title}", row(cells[0]), "|" + line.replace("+", "|") + "|"]
    out.extend(row(r) for r in cells[1:])
    text = "\n".join(out)
    print(text, flush=True)
    return text


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def machine() -> dict[str, str]:
    import celery
    import flask
    import gunicorn
    import psycopg
    import sqlalchemy

    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )

    def server_version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return "?"

    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python": sys.version.split()[0],
        "postgres": server_version(["psql", "--version"]).split()[2],
        "redis": server_version(["redis-server", "--version"]).split()[2].removeprefix("v="),
        "celery": celery.__version__,
        "flask": flask.__version__,
        "gunicorn": gunicorn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "workers": f"worker: prefork x{WORKER_CONCURRENCY} (queue pipeline); "
        f"generator: threads x{GENERATOR_CONCURRENCY} (queue generation)",
        "load average": load_average(),
    }


def load_average() -> str:
    """The machine's 1/5/15-minute load: a shared machine's neighbours show here."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
