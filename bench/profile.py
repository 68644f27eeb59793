"""Where the CPU goes, in-process on PostgreSQL, for reading the benchmarks'
figures; not one of ``make bench``'s benchmarks.

    .venv/bin/python -m bench.profile [stages|get|etag|post] [--n 200] [--sort tottime]
                                      [--top 40] [--out FILE]

``etag``: the GET a poller makes with ``If-None-Match`` (a 304).
``stages``: ``app.pipeline.runner.run_stage`` (what the Celery tasks call) for
N generations, one stage after another, no broker. ``get`` / ``post``: N
requests of ``GET /api/generate/<id>`` (a pending generation) or ``POST
/api/generate/from-prompt`` through the Flask test client (the chains POST
sends wait unread in a scratch Redis db). First CPU per item without the
profiler, then a profile of N more (CPU time, so waiting is not counted)."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from .harness import Env, services

BODY = {"prompt": "emerald silk slip dress", "settings": {"provider": "local"}}


Item = Callable[[int, dict[str, float], cProfile.Profile | None], None]


def _workload(env: Env, what: str) -> Item:
    """A function running item i, adding its CPU seconds by part to a dict
    and profiling the timed parts only (a stage's submit is set-up)."""
    from app import create_app
    from app.api.auth import create_user
    from app.pipeline import STAGES
    from app.pipeline.runner import run_stage

    app = create_app(env.vars)
    s = app.extensions["bff"]
    with s.db.session() as session:
        _, key = create_user(session, "profile")
    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}

    def submit() -> str:
        return client.post("/api/generate/from-prompt", json=BODY, headers=headers).get_json()["id"]

    pending = submit()
    tag = client.get(f"/api/generate/{pending}", headers=headers).headers["ETag"]
    revalidate = {**headers, "If-None-Match": tag}

    def item(i: int, cpu: dict[str, float], profiler: cProfile.Profile | None) -> None:
        def timed(part: str, fn: Callable[[], object]) -> None:
            c0 = time.process_time()
            if profiler:
                profiler.enable()
            fn()
            if profiler:
                profiler.disable()
            cpu[part] = cpu.get(part, 0.0) + time.process_time() - c0

        if i % 50 == 0:
            env.flush_redis()  # the chains nobody reads
        if what == "get":
            timed("GET", lambda: client.get(f"/api/generate/{pending}", headers=headers))
        elif what == "etag":
            timed("304", lambda: client.get(f"/api/generate/{pending}", headers=revalidate))
        elif what == "post":
            timed("POST", submit)
        else:
            gid = submit()
            with app.app_context():
                for name in STAGES:
                    timed(name, lambda n=name: run_stage(s.db, s.settings, s.storage, gid, n))

    return item


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument(
        "what", nargs="?", choices=("stages", "get", "etag", "post"), default="stages"
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", help="also write the raw profile here")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile(time.process_time)  # CPU, not waiting
    with services() as env:
        item = _workload(env, args.what)
        for i in range(20):  # pools, caches, lazily built things
            item(i, {}, None)
        plain: dict[str, float] = {}
        for i in range(args.n):
            item(i, plain, None)
        for i in range(args.n):
            item(i, {}, profiler)
    print(f"CPU ms per item, not profiled: {1000 * sum(plain.values()) / args.n:.2f}")
    for part, cpu in plain.items():
        print(f"  {part:9s} {1000 * cpu / args.n:6.2f}")
    stats = pstats.Stats(profiler).strip_dirs().sort_stats(args.sort)
    stats.print_stats(args.top)
    if args.out:
        stats.dump_stats(args.out)


if __name__ == "__main__":
    main()
