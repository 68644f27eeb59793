"""The embedded default, started the way `make dev` starts it: `bff dev` as a
subprocess in an empty folder, no services, no keys."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import CLEAN
from tests.integration.helpers import assert_completed_with_png, wait_final
from tests.support.services import free_port

BFF = str(Path(sys.executable).parent / "bff")


def test_make_dev_runs_the_whole_system_without_services(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    proc = subprocess.Popen(
        [BFF, "dev", "--port", str(port), "--concurrency", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        key = None
        deadline = time.monotonic() + 90
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            if lines[-2:-1] and lines[-2].startswith("API key"):
                key = line.strip()
        assert key and re.fullmatch(r"bff_[0-9a-f]{8}_\S+", key), "".join(lines)
        # Keep draining output so the child never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
        base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
        health = requests.get(base + "/health", timeout=5).json()
        assert health["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        resp = requests.post(
            base + "/api/generate/from-prompt",
            headers=headers,
            json={"prompt": "emerald silk slip dress"},
            timeout=10,
        )
        assert resp.status_code == 202, resp.text
        gen = wait_final(base, headers, resp.json()["id"], timeout=60)
        assert_completed_with_png(gen, "prompt")
        assert gen["assets"][0]["url"].startswith(f"{base}/cdn/users/")
        assert (tmp_path / "var" / "bff.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("bff dev did not stop on Ctrl-C") from None
