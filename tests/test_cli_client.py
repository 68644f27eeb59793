"""``bff generate``/``refine`` as an HTTP client: it waits no longer than
``--timeout`` and ends in one sentence whatever the server or network does.
Against the Procfile's ``web`` with a broker nothing consumes (jobs stay
pending), so a wait's end is the client's own doing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from app.cli import client

BFF = str(Path(sys.executable).parent / "bff")


def bff(api, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {"BFF_API_URL": api.base_url, "BFF_API_KEY": api.key, "PATH": "/usr/bin:/bin"}
    return subprocess.run([BFF, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_wait_ends_at_its_timeout_though_no_stage_changes(api):
    """Only keepalives arrive while nothing runs the job."""
    started = time.monotonic()
    run = bff(api, "generate", "red wool coat", "--wait", "--timeout", "1")
    assert run.returncode == 1 and "not finished after 1s" in run.stderr, run.stderr
    assert time.monotonic() - started < 15  # the keepalives came every 0.3 s


def test_a_generation_canceled_while_waited_on_says_so_in_words(api):
    proc = subprocess.Popen(
        [BFF, "generate", "navy blazer", "--wait", "--timeout", "20"],
        env={"BFF_API_URL": api.base_url, "BFF_API_KEY": api.key, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "submitted gen_…"
        assert line.startswith("submitted "), line + proc.stderr.read()
        gen_id = line.split()[-1]
        resp = requests.post(f"{api.base_url}/api/generate/{gen_id}/cancel", headers=api.headers)
        assert resp.status_code == 200, resp.text
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 1 and err.strip() == "Error: canceled", err
    finally:
        proc.kill()


@pytest.mark.parametrize(
    "url,said",
    [
        ("127.0.0.1:3001", "BFF_API_URL=127.0.0.1:3001 cannot be used"),
        ("http://127.0.0.1:9", "cannot reach the API at http://127.0.0.1:9"),
        # A proxy's credentials in the URL are not printed with it.
        ("http://ops:hunter2@127.0.0.1:9", "cannot reach the API at http://ops:***@127.0.0.1:9"),
        ("htp://ops:hunter2@127.0.0.1:9", "BFF_API_URL=htp://ops:***@127.0.0.1:9 cannot be used"),
    ],
)
def test_an_unusable_api_url_is_one_sentence(url, said):
    env = {"BFF_API_URL": url, "BFF_API_KEY": "bff_x"}
    result = CliRunner().invoke(client.generate, ["red dress"], env=env)
    assert result.exit_code == 1 and said in result.output, result.output
    assert "Traceback" not in result.output and "hunter2" not in result.output


def test_a_key_pasted_with_its_line_break_is_used_as_the_key(api):
    env = {"BFF_API_URL": api.base_url, "BFF_API_KEY": api.key + "\n"}
    result = CliRunner().invoke(client.generations_list, [], env=env)
    assert result.exit_code == 0, result.output


def test_a_key_that_cannot_be_sent_is_blamed_not_the_url():
    env = {"BFF_API_URL": "http://127.0.0.1:9", "BFF_API_KEY": "bff_x\nbff_y"}
    result = CliRunner().invoke(client.generate, ["red dress"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output == (
        "Error: BFF_API_KEY cannot be sent: it holds a line break; copy the key again\n"
    )


def test_an_api_url_ending_in_api_says_to_drop_it(api):
    env = {"BFF_API_URL": api.base_url + "/api/", "BFF_API_KEY": api.key}
    result = CliRunner().invoke(client.generate, ["red dress"], env=env)
    assert result.exit_code == 1, result.output
    assert f"ends in /api: give the server's address, e.g. {api.base_url}\n" in result.output


def test_polling_follows_a_late_refine_to_its_end(monkeypatch):
    """Without the event stream, a completed generation refining an image is
    not done until its refine is."""
    stages = [{"name": "refine", "status": s, "durationMs": None} for s in ("pending", "completed")]
    answers = iter({"status": "completed", "stages": [st], "assets": []} for st in stages)

    class Answer:
        status_code, headers = 200, {"Retry-After": "0"}

        def __init__(self) -> None:
            self.body = next(answers)

        def json(self) -> dict:
            return self.body

    monkeypatch.setattr(client, "_api", lambda *a, **k: Answer())
    gen = client._poll("gen_x", time.monotonic() + 10, 10)
    assert gen["stages"][0]["status"] == "completed"


SERVER_LIBRARIES = ("flask", "sqlalchemy", "pydantic", "redis", "celery", "psycopg", "boto3")


def test_client_commands_load_none_of_the_servers_libraries(api):
    """Each ``bff`` call starts a Python process: with the server's libraries
    loaded too, a client command spent 2-3 s starting before it did anything."""
    script = (
        "import json, sys\n"
        "from app.cli import cli\n"
        "for args in (['--help'], ['generate', '--help'], ['batch', '--help'],\n"
        "             ['generate', 'red wool coat'], ['cancel', 'no-such-id']):\n"
        "    try:\n"
        "        cli.main(args, prog_name='bff', standalone_mode=False)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc, file=sys.stderr)\n"
        f"print(json.dumps([m for m in {SERVER_LIBRARIES!r} if m in sys.modules]))\n"
    )
    env = {"BFF_API_URL": api.base_url, "BFF_API_KEY": api.key, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "not found" in run.stderr.lower() or "404" in run.stderr, run.stderr  # it did ask
    assert run.stdout.splitlines()[-1] == "[]", run.stdout


class _WebPage(BaseHTTPRequestHandler):
    """Another server on the port: a front end's dev server answers every
    path with its page."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<!doctype html><div id=app></div>")

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web_page():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "command,args,path",
    [
        (client.generations_list, [], "/api/generate?limit=20"),
        (client.generations_show, ["gen_1"], "/api/generate/gen_1"),
    ],
)
def test_another_server_at_the_api_url_is_one_sentence(web_page, command, args, path):
    env = {"BFF_API_URL": web_page, "BFF_API_KEY": "bff_x"}
    result = CliRunner().invoke(command, args, env=env)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == (
        f"Error: {web_page}{path} answered without JSON: is BFF_API_URL this API's address?\n"
    )
