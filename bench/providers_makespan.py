"""Makespan of N generations through a slow fake provider on ONE generator
process, for the waiting design (create, save the id, poll briefly, free the
worker, resume later) against holding the worker for the whole prediction.

    .venv/bin/python bench/providers_makespan.py [--n 50] [--latency 2]

Needs PostgreSQL and Redis on 127.0.0.1 (like the integration tests). Runs the
Procfile's web, worker and generator processes against the fake Replicate
server (in this process); local-disk storage, so the bucket is not measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from app.api.auth import create_user  # noqa: E402
from app.cli import upgrade_database  # noqa: E402
from tests.fakes.replicate import FakeReplicate  # noqa: E402
from tests.support import procs as P  # noqa: E402
from tests.support.services import (  # noqa: E402
    free_port,
    redis_db_number,
    release_redis_db,
    scratch_postgres_db,
)


def run(n: int, latency: float, poll_seconds: float, concurrency: int, db_url: str) -> dict:
    import redis

    db = redis_db_number()
    redis.Redis("127.0.0.1", 6379, db=db).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="bff-bench-"))
    port = free_port()
    with FakeReplicate() as fake:
        fake.latency = latency
        env = {
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "DATABASE_URL": db_url,
            "REDIS_URL": f"redis://127.0.0.1:6379/{db}",
            "STORAGE_BACKEND": "local",
            "BFF_MEDIA_ROOT": str(tmp / "media"),
            "BFF_VAR_DIR": str(tmp / "var"),
            "REPLICATE_API_TOKEN": "r8_bench",
            "REPLICATE_BASE_URL": fake.url,
            "BFF_PROVIDER_POLL_SECONDS": str(poll_seconds),
            "BFF_RATE_LIMIT_GOOGLE_IMAGEN": "1000/60",
            "PORT": str(port),
            "BFF_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "WORKER_CONCURRENCY": "4",
            "GENERATOR_CONCURRENCY": str(concurrency),
            "GUNICORN_WORKERS": "2",
        }
        pf = P.procfile()
        procs = {k: P.Process(k, pf[k], env, tmp) for k in ("web", "worker", "generator")}
        try:
            base = f"http://127.0.0.1:{port}"
            P.wait_for(lambda: P.http_ok(base + "/health"), 60, "api", procs=procs.values())
            for k in ("worker", "generator"):
                P.wait_for(lambda k=k: P.worker_ready(procs[k]), 60, k, procs=procs.values())
            app = create_app(env)
            with app.extensions["bff"].db.session() as s:
                _, key = create_user(s, f"bench-{time.time_ns()}")
            headers = {"Authorization": f"Bearer {key}"}

            def submit(i: int) -> str:
                r = requests.post(
                    f"{base}/api/generate/from-prompt",
                    headers=headers,
                    json={"prompt": f"look {i}", "settings": {"provider": "google-imagen"}},
                    timeout=30,
                )
                r.raise_for_status()
                return r.json()["id"]

            start = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                ids = list(pool.map(submit, range(n)))
            pending, statuses = set(ids), {}
            while pending:
                for gid in list(pending):
                    body = requests.get(f"{base}/api/generate/{gid}", headers=headers).json()
                    if body["status"] in ("completed", "failed", "canceled"):
                        statuses[gid] = body["status"]
                        pending.discard(gid)
                time.sleep(0.2)
            makespan = time.monotonic() - start
            with app.extensions["bff"].db.session() as s:
                window, avg_ms = s.execute(
                    text(
                        "SELECT EXTRACT(EPOCH FROM MAX(finished_at) - MIN(started_at)), "
                        "AVG(duration_ms) FROM generation_stages "
                        "WHERE name = 'generate' AND generation_id = ANY(:ids)"
                    ),
                    {"ids": ids},
                ).one()
        finally:
            for p in procs.values():
                p.stop()
            release_redis_db(db)
        return {
            "n": n,
            "latency_s": latency,
            "poll_s": poll_seconds,
            "generator_concurrency": concurrency,
            "makespan_s": round(makespan, 1),
            "generate_window_s": round(float(window), 1),
            "generate_avg_s": round(float(avg_ms) / 1000, 2),
            "completed": sum(s == "completed" for s in statuses.values()),
            "creates": fake.creates,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--latency", type=float, default=2.0)
    args = parser.parse_args()
    with scratch_postgres_db() as url:
        upgrade_database(url)
        for concurrency in (32, 4):
            for poll, label in ((0.5, "waiting (frees the worker)"), (120.0, "holding")):
                result = run(args.n, args.latency, poll, concurrency, url)
                print(f"{label:28s} {result}", flush=True)


if __name__ == "__main__":
    main()
