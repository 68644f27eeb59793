"""The embedded default, started the way `make dev` starts it: `bff dev` as a
subprocess in an empty folder, no services, no keys."""

from __future__ import annotations

import subprocess

import pytest
import requests

from tests.integration.helpers import assert_completed_with_png, submit, wait_final
from tests.support.embedded import BFF, embedded_system


def test_make_dev_runs_the_whole_system_without_services(tmp_path):
    with embedded_system(tmp_path) as system:
        base, headers = system.base_url, system.headers
        health = requests.get(base + "/health", timeout=5).json()
        assert health["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        gen = wait_final(base, headers, submit(base, headers, "emerald silk slip dress"))
        assert_completed_with_png(gen, "prompt")
        assert gen["assets"][0]["url"].startswith(f"{base}/cdn/users/")
        assert system.db_path.exists()
        # Its folder (webhook secrets, uploads, messages) is the account's alone.
        assert system.db_path.parent.stat().st_mode & 0o777 == 0o700
        assert system.db_path.stat().st_mode & 0o077 == 0
        # The line it suggests works when pasted into a shell (here: without --wait).
        pasted = subprocess.run(
            ["bash", "-c", system.try_line.replace(" --wait", "")],
            cwd=tmp_path,
            env={k: v for k, v in system.env.items() if not k.startswith("BFF_API")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pasted.returncode == 0 and "submitted gen_" in pasted.stdout, pasted
        # A second `bff dev` on the same port says why it cannot start.
        again = subprocess.run(
            [BFF, "dev", "--port", base.rsplit(":", 1)[1]],
            env=system.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode != 0 and "is in use" in again.stderr, again
        assert system.stop(), "bff dev did not stop on Ctrl-C"
        assert system.proc.returncode == 0
        assert not any(line.startswith("Error") for line in system.output), system.output
    # Every process it started has gone too: nothing answers on its port.
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/health", timeout=2)
