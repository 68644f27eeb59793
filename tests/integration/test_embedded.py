"""The embedded default, started the way `make dev` starts it: `bff dev` as a
subprocess in an empty folder, no services, no keys."""

from __future__ import annotations

import pytest
import requests

from tests.integration.helpers import assert_completed_with_png, wait_final
from tests.support.embedded import embedded_system


def test_make_dev_runs_the_whole_system_without_services(tmp_path):
    with embedded_system(tmp_path) as system:
        base, headers = system.base_url, system.headers
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
        assert system.db_path.exists()
        assert system.stop(), "bff dev did not stop on Ctrl-C"
    # Every process it started has gone too: nothing answers on its port.
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/health", timeout=2)
