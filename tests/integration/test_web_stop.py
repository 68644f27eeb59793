"""The Procfile's ``web`` stopping (SIGTERM, a deploy or ``bff dev``'s Ctrl-C)
with an event stream open."""

from __future__ import annotations

import threading

import requests

from tests.support.live import live_api


def test_a_stop_ends_an_open_event_stream_cleanly_and_gunicorn_exits(tmp_path):
    """The stream used to hold the worker for graceful_timeout (20 s) and then
    be cut mid-body; now it ends, and the client resumes on another process."""
    with live_api(tmp_path) as api:
        body = {"prompt": "red wool coat"}
        url = f"{api.base_url}/api/generate/from-prompt"
        gen_id = requests.post(url, json=body, headers=api.headers, timeout=10).json()["id"]
        events = f"{api.base_url}/api/generate/{gen_id}/events"
        with requests.get(events, headers=api.headers, stream=True, timeout=30) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(lines) == b"retry: 2000"  # open; the job stays pending
            stop = threading.Thread(target=api.proc.stop)
            stop.start()
            rest = list(lines)  # a stream cut mid-body raises ChunkedEncodingError
            stop.join()
        assert not any(line.startswith(b"event: done") for line in rest), rest
        assert api.proc.popen.returncode == 0, api.proc.output()[-2000:]  # not killed
