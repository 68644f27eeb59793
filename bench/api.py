"""Benchmark 3: the API under concurrent load.

``POST /api/generate/from-prompt`` and ``GET /api/generate/<id>`` (a
completed generation: seven stages, one asset) on gunicorn with
``gunicorn.conf.py``, against a trivial JSON endpoint (``bench.trivial``)
served by the same gunicorn settings, loaded by wrk with the same threads,
connections and duration. No Celery worker runs: submitted chains wait in
Redis, so this measures the API alone (its validation, database and broker
work). Each round runs both, which of them first alternating; the summary
is the median of the rounds' ratios.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile

from tests.support import procs as P

from .harness import Unavailable, free_port, ratio, services, table

DURATION = int(os.environ.get("BENCH_API_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", "32"))
# More and shorter rounds than the other benchmarks: one wrk run's rate moves
# by up to +-25 % with the machine (the trivial endpoint alone: 2,000-3,500
# req/s in one run), so a median of a few rounds still moved by 0.1x.
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "6"))
WARMUP_SECONDS = 2
BODY = '{"prompt": "emerald silk slip dress with a cowl neck", "settings": {"provider": "local"}}'

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, method: str = "GET", key: str | None = None, seconds: int = DURATION
) -> dict[str, float]:
    """requests/s, p99 ms and non-2xx count of one wrk run."""
    lines = [f'wrk.method = "{method}"']
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    if method == "POST":
        lines += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = '{BODY}'"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", f.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p99": float(value) * _UNITS[unit],
        "errors": int(errors.group(1)) if errors else 0,
    }


def _completed_generation(env_vars: dict[str, str]) -> tuple[str, str]:
    """A user's API key and one completed generation of theirs."""
    from app import create_app
    from app.api.auth import create_user
    from app.pipeline import STAGES
    from app.pipeline.runner import run_stage

    app = create_app(env_vars)
    s = app.extensions["bff"]
    with s.db.session() as session:
        _, key = create_user(session, "bench")
    resp = app.test_client().post(
        "/api/generate/from-prompt",
        data=BODY,
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    gid = resp.get_json()["id"]
    with app.app_context():
        for name in STAGES:
            run_stage(s.db, s.settings, s.storage, gid, name, task_id=f"bench-{name}")
    return key, gid


def run() -> list[str]:
    if shutil.which("wrk") is None:
        raise Unavailable("wrk (apt-get install -y wrk)")
    rows, results = [], []
    with services() as env:
        key, gid = _completed_generation(env.vars)
        ports = {"trivial": free_port(), "ours": free_port()}
        web = P.procfile()["web"]
        servers = {
            "trivial": env.start(
                "web-trivial",
                web.replace('"app:create_app()"', "bench.trivial:app"),
                {"PORT": str(ports["trivial"])},
            ),
            "ours": env.start("web-ours", web, {"PORT": str(ports["ours"])}),
        }
        for name, port in ports.items():
            P.wait_for(
                lambda p=port: P.http_ok(f"http://127.0.0.1:{p}/health"),
                60,
                f"gunicorn ({name})",
                procs=servers.values(),
            )
        base_url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
        # Warm-up, not measured: connection pools filled, prepared statements,
        # caches, lazily built templates; the same for both servers.
        endpoints = (("GET", f"/api/generate/{gid}"), ("POST", "/api/generate/from-prompt"))
        for method, path in endpoints:
            wrk(base_url["trivial"] + path, method, seconds=WARMUP_SECONDS)
            wrk(base_url["ours"] + path, method, key, seconds=WARMUP_SECONDS)
        env.flush_redis()
        for rnd in range(1, ROUNDS + 1):
            for label, method, path in (
                ("GET /api/generate/<id>", "GET", f"/api/generate/{gid}"),
                ("POST /api/generate/from-prompt", "POST", "/api/generate/from-prompt"),
            ):
                # Which server goes first alternates: drift hits both alike.
                if rnd % 2:
                    base = wrk(base_url["trivial"] + path, method)
                    ours = wrk(base_url["ours"] + path, method, key)
                else:
                    ours = wrk(base_url["ours"] + path, method, key)
                    base = wrk(base_url["trivial"] + path, method)
                env.flush_redis()  # the chains nobody consumes
                results.append((label, base, ours))
                rows.append(
                    [
                        rnd,
                        label,
                        base["rps"],
                        ours["rps"],
                        ratio(ours["rps"], base["rps"]),
                        base["p99"],
                        ours["p99"],
                        ratio(base["p99"], ours["p99"]),
                        ours["errors"] + base["errors"],
                    ]
                )
    summary = []
    for label, target in (("GET /api/generate/<id>", 0.7), ("POST /api/generate/from-prompt", 0.5)):
        mine = [(b, o) for lbl, b, o in results if lbl == label]
        rps = statistics.median(o["rps"] / b["rps"] for b, o in mine)
        p99 = statistics.median(b["p99"] / o["p99"] for b, o in mine)
        summary.append(
            [
                label,
                f"{rps:.2f}x",
                f"{p99:.2f}x",
                f">= {target}x",
                "ok" if min(rps, p99) >= target else "UNDER",
            ]
        )
    return [
        table(
            f"API vs a trivial JSON endpoint (same gunicorn settings; wrk -t2 -c{CONNECTIONS} "
            f"-d{DURATION}s); p99 ratio is trivial/ours, so higher is better",
            [
                "round",
                "endpoint",
                "trivial req/s",
                "ours req/s",
                "req/s ratio",
                "trivial p99 ms",
                "ours p99 ms",
                "p99 ratio",
                "non-2xx",
            ],
            rows,
        ),
        table(
            "API ratios (median over rounds)",
            ["endpoint", "req/s", "p99 (trivial/ours)", "target", ""],
            summary,
        ),
    ]
