"""``python -m bench`` runs every benchmark; ``python -m bench NAME...`` the named ones.

Each prints a table whose figures are ratios against a baseline measured in
the same run (these machines are noisy; absolute times drift). Results are
also written to ``var/bench/<name>.txt``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from .harness import ROOT, Unavailable, load_average, machine, table

# Run order: the priorities.
BENCHMARKS = {
    "overhead": "Orchestration: ours end to end over HTTP vs a bare seven-task Celery chain",
    "dbcost": "Database statements and commits per generation",
    "api": "API server CPU per request vs a trivial Flask route",
    "memory": "Worker RSS growth over 1,000 generations",
    "providers": "Makespan waiting on a 2 s provider vs the rate-limit ideal",
    "latency": "One generation end to end: embedded default vs Postgres + Redis",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="NAME")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    table("Machine and settings", ["", ""], list(machine().items()))
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        print(f"\n# {name}: {BENCHMARKS[name]}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        try:
            texts = module.run()
        except Unavailable as exc:
            print(f"*** SKIPPED {name}: {exc} is not available ***", flush=True)
            continue
        except Exception:
            failed += 1
            import traceback

            traceback.print_exc()
            continue
        Path(out_dir / f"{name}.txt").write_text("\n".join(texts) + "\n")
        took = time.monotonic() - started
        print(f"({name} took {took:.0f} s; load average {load_average()})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
