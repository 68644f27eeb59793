"""``bff batch`` as a user runs it: a subprocess talking HTTP to the embedded
system (``bff dev``: SQLite and the filesystem broker, which takes the
batch's canvas group as Redis does)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import requests

BFF = str(Path(sys.executable).parent / "bff")


def bff_batch(env: dict[str, str], *args: str):
    return subprocess.run(
        [BFF, "batch", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_batch_from_csv_waits_and_downloads(embedded, tmp_path):
    file = tmp_path / "looks.csv"
    file.write_text(
        "prompt,size,count,provider\n"
        "ivory linen shirt,portrait,2,local\n"
        "rust wool coat,,,local\n"
        "sage silk scarf,16:9,,local\n"
    )
    done = bff_batch(embedded.env, str(file), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    batch_id = re.search(r"^submitted (bat_\w+): 3 generations", done.stdout, re.M).group(1)
    assert "completed: 3 completed, 0 failed, 0 canceled" in done.stdout, done.stdout

    out = tmp_path / "out"
    got = bff_batch(embedded.env, "download", batch_id, str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "4 images and manifest.csv" in got.stdout
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 4 and {r["prompt"] for r in rows} >= {"ivory linen shirt"}
    for row in rows:
        assert (out / row["file"]).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == sorted(
        r["file"] for r in rows
    )


def test_batch_matrix_and_json_lines(embedded, tmp_path):
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({"prompts": ["blazer", "trench"], "colorways": ["navy", "camel"]}))
    done = bff_batch(embedded.env, str(matrix), "--matrix")
    assert done.returncode == 0, done.stderr
    submitted = re.search(r"^submitted (bat_\w+): 4 generations", done.stdout, re.M)
    assert submitted, done.stdout
    # Only the submit is under test: cancel, so the shared server's one worker
    # is not left 28 stages of work that later tests would queue behind.
    cancel = f"{embedded.base_url}/api/batches/{submitted.group(1)}/cancel"
    # (409: the four were quicker than this request, which is as good.)
    assert requests.post(cancel, headers=embedded.headers, timeout=10).status_code in (200, 409)

    lines = tmp_path / "items.jsonl"
    lines.write_text('{"prompt": "a red coat"}\n\n{"prompt": "a blue coat", "colour": "x"}\n')
    bad = bff_batch(embedded.env, str(lines))
    assert bad.returncode != 0
    assert "422" in bad.stderr and "items.1" in bad.stderr, bad.stderr
