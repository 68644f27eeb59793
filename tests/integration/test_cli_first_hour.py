"""``bff dev`` (``make dev``) when one of its processes dies: it says which
and how, stops the rest and fails (Ctrl-C: test_embedded.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support.embedded import embedded_system


def children(pid: int) -> dict[int, str]:
    """The processes ``pid`` started: their command lines by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmdline = (stat.parent / "cmdline").read_bytes()
                found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode()
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def test_a_process_that_dies_is_named_and_bff_dev_fails(tmp_path):
    with embedded_system(tmp_path) as system:
        kids = children(system.proc.pid)
        workers = [pid for pid, cmd in kids.items() if "celery" in cmd]
        assert len(workers) == 1, (kids, "".join(system.output))
        [worker] = workers
        os.kill(worker, signal.SIGKILL)
        assert system.proc.wait(30) == 1
        said = "Error: worker exited (signal SIGKILL); stopping the rest\n"
        deadline = time.monotonic() + 5  # the output is drained by a thread
        while said not in system.output and time.monotonic() < deadline:
            time.sleep(0.1)
        assert said in system.output, "".join(system.output)
        assert "a process exited" not in "".join(system.output)
    with pytest.raises(requests.ConnectionError):  # the web process was stopped too
        requests.get(system.base_url + "/health", timeout=2)
