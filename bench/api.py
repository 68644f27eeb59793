"""The API's cost per request against a trivial Flask route.

Ours (``app:create_app()``) and ``bench.trivial`` are each served by the
Procfile's ``web`` command (gunicorn with ``gunicorn.conf.py``) and loaded by
wrk with the same threads, connections and duration. The figure is **server
CPU per request**: utime + stime of the gunicorn process tree (from /proc)
over a wrk run, divided by the requests wrk completed. Efficiency = the
trivial route's CPU per request / ours (1.0 would be free). Requests/s and
p99 are shown beside it; on a shared 2-core machine they move with the
neighbours far more than CPU per request does. Our database's Postgres
backends are shown apart (the trivial route has none).

No Celery worker runs: generations stay pending (what a polling client
reads), and the chains POST sends wait in a scratch Redis db, flushed after
each run. Each round runs the trivial route and ours, which first
alternating; the summary is the median over rounds.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile

import requests

from .harness import Env, Unavailable, api_key, services, table, web
from .procstat import CpuMeter, descendants

DURATION = int(os.environ.get("BENCH_API_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", "32"))
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "3"))
WARMUP_SECONDS = 2
BODY = '{"prompt": "emerald silk slip dress with a cowl neck", "settings": {"provider": "local"}}'
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, method: str, headers: dict[str, str], seconds: int = DURATION) -> dict:
    """Requests completed, requests/s, p99 ms and error responses (>= 400) of one run."""
    lines = [f'wrk.method = "{method}"']
    lines += [f"wrk.headers[{k!r}] = {v!r}" for k, v in headers.items()]
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
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p99": float(value) * _UNITS[unit],
        "errors": int(errors.group(1)) if errors else 0,
    }


def measured(env: Env, server, url: str, method: str, headers: dict[str, str]) -> dict:
    """One wrk run with the server's CPU (and our database's) per request, in ms."""
    dbname = env.vars["DATABASE_URL"].rsplit("/", 1)[1]
    tree = descendants(server.pid)
    meter = CpuMeter(
        {
            "server": lambda pid, cmd: pid in tree,
            "postgres": lambda pid, cmd: cmd.startswith("postgres:") and f" {dbname} " in cmd,
        }
    )
    meter.start()
    result = wrk(url, method, headers)
    cpu = meter.stop()
    env.flush_redis()  # the chains nobody consumes
    n = max(1, result["requests"])
    return {**result, "cpu": 1000 * cpu["server"] / n, "db": 1000 * cpu["postgres"] / n}


def _generations(env: Env, key: str) -> dict[str, str]:
    """A pending and a completed generation of the key's user (set-up,
    in-process; the ETag comes from the server: it names the server's URLs)."""
    from app import create_app
    from app.pipeline import STAGES
    from app.pipeline.runner import run_stage

    app = create_app(env.vars)
    s, client = app.extensions["bff"], app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    ids = []
    for _ in range(2):
        resp = client.post(
            "/api/generate/from-prompt", data=BODY, headers=auth, content_type="application/json"
        )
        ids.append(resp.get_json()["id"])
    with app.app_context():
        for name in STAGES:
            run_stage(s.db, s.settings, s.storage, ids[1], name, task_id=f"bench-{name}")
    assert client.get(f"/api/generate/{ids[1]}", headers=auth).get_json()["status"] == "completed"
    s.db.engine.dispose()
    env.flush_redis()
    return {"pending": ids[0], "completed": ids[1]}


# (label, method, path, extra headers, floor): the paths take the generations' ids.
CASES = (
    ("GET <id>, pending", "GET", "/api/generate/{pending}", {}, 0.3),
    ("GET <id>, completed", "GET", "/api/generate/{completed}", {}, None),
    (
        "GET <id>, If-None-Match (304)",
        "GET",
        "/api/generate/{pending}",
        {"If-None-Match": "{etag}"},
        None,
    ),
    ("POST from-prompt", "POST", "/api/generate/from-prompt", {}, 0.2),
)


def run() -> list[str]:
    if shutil.which("wrk") is None:
        raise Unavailable("wrk (apt-get install -y wrk)")
    results: list[tuple[int, str, dict, dict]] = []
    with services() as env:
        key = api_key(env)
        gens = _generations(env, key)
        trivial, trivial_url = web(env, "bench.trivial:app", "web-trivial")
        ours, ours_url = web(env, None, "web-ours")
        auth = {"Authorization": f"Bearer {key}"}
        pending = f"{ours_url}/api/generate/{gens['pending']}"
        gens["etag"] = etag = requests.get(pending, headers=auth, timeout=10).headers["ETag"]
        again = requests.get(pending, headers={**auth, "If-None-Match": etag}, timeout=10)
        assert again.status_code == 304, again.status_code  # the case measures the 304
        cases = [
            (
                label,
                method,
                path.format(**gens),
                {k: v.format(**gens) for k, v in hdrs.items()},
                floor,
            )
            for label, method, path, hdrs, floor in CASES
        ]
        # Warm-up, not measured: pools, prepared statements, lazily built things.
        for _, method, path, hdrs, _ in cases:
            wrk(trivial_url + path, method, {}, WARMUP_SECONDS)
            wrk(ours_url + path, method, {**auth, **hdrs}, WARMUP_SECONDS)
        env.flush_redis()
        trivial_paths = {"GET": "/api/generate/gen_trivial", "POST": "/api/generate/from-prompt"}

        def baseline() -> dict[str, dict]:
            return {
                m: measured(env, trivial, trivial_url + path, m, {})
                for m, path in trivial_paths.items()
            }

        for rnd in range(1, ROUNDS + 1):  # which server goes first alternates
            base = baseline() if rnd % 2 else {}
            mine = [
                (label, method, measured(env, ours, ours_url + path, method, {**auth, **hdrs}))
                for label, method, path, hdrs, _ in cases
            ]
            base = base or baseline()
            results += [(rnd, label, base[method], o) for label, method, o in mine]
    return _tables(results, cases)


def _tables(results: list[tuple[int, str, dict, dict]], cases) -> list[str]:
    return [_rounds_table(results), _summary_table(results, cases)]


def _rounds_table(results: list[tuple[int, str, dict, dict]]) -> str:
    rows = [
        [rnd, label, b["cpu"], o["cpu"], f"{b['cpu'] / o['cpu']:.2f}x", o["db"]]
        + [b["rps"], o["rps"], b["p99"], o["p99"], b["errors"] + o["errors"]]
        for rnd, label, b, o in results
    ]
    header = ["round", "endpoint", "trivial CPU", "ours CPU", "efficiency", "ours Postgres CPU"]
    header += ["trivial req/s", "ours req/s", "trivial p99 ms", "ours p99 ms", "errors"]
    return table(
        f"API runs (gunicorn.conf.py for both; wrk -t2 -c{CONNECTIONS} -d{DURATION}s); "
        "CPU is the gunicorn tree's, ms per request",
        header,
        rows,
    )


def _summary_table(results: list[tuple[int, str, dict, dict]], cases) -> str:
    summary = []
    for label, *_, floor in cases:
        mine = [(b, o) for _, lbl, b, o in results if lbl == label]
        eff = statistics.median(b["cpu"] / o["cpu"] for b, o in mine)
        summary.append(
            [
                label,
                statistics.median(b["cpu"] for b, _ in mine),
                statistics.median(o["cpu"] for _, o in mine),
                f"{eff:.2f}x",
                "" if floor is None else f">= {floor}x",
                "" if floor is None else ("ok" if eff >= floor else "UNDER"),
                statistics.median(o["db"] for _, o in mine),
                f"{statistics.median(o['rps'] / b['rps'] for b, o in mine):.2f}x",
                statistics.median(o["p99"] for _, o in mine),
            ]
        )
    header = ["endpoint", "trivial ms CPU", "ours ms CPU", "efficiency", "floor", ""]
    header += ["ours Postgres ms", "req/s ratio", "ours p99 ms"]
    return table(
        f"API efficiency = trivial CPU per request / ours, median of {ROUNDS} rounds",
        header,
        summary,
    )
