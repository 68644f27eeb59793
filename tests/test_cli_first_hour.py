"""What a new user ran into in their first hour with ``bff``: a port a
stopped server left in TIME-WAIT, Ctrl-C while waiting, no asset ids to
refine, no way to retry, cancel or delete, a photo without a prompt, blank
user names. The client commands run against the Procfile's ``web`` with a
broker nothing consumes; the tests run the stages in-process when a job
should move (``bff dev`` itself: tests/integration/test_cli_first_hour.py)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner as Click
from sqlalchemy import func, select

from app.cli import cli
from app.cli.dev import _port_free
from app.domain.models import User
from app.pipeline.context import StageFailed
from app.pipeline.runner import STAGE_FUNCS
from tests.support.pipeline import load, run_all, services
from tests.support.pipeline import png_bytes as photo_bytes

BFF = str(Path(sys.executable).parent / "bff")
URL = re.compile(r"^https?://\S+$", re.M)
TCP_STATES = {"06": "TIME-WAIT", "05": "FIN-WAIT-2", "0A": "LISTEN"}


# ------------------------------------------------------------ the dev port


def _states(port: int) -> set[str]:
    """The TCP states of this machine's sockets on local port ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.rsplit(":", 1)[1], 16) == port:
            found.add(TCP_STATES.get(state, state))
    return found


def gunicorn_like_socket() -> socket.socket:
    """A socket set up as gunicorn sets up its listener (gunicorn/sock.py)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


@pytest.mark.parametrize("left", ["TIME-WAIT", "FIN-WAIT-2"])
def test_a_port_a_stopped_server_left_connections_on_is_free(left):
    """As after Ctrl-C with a browser tab open: gunicorn closed its side
    first, so its connections linger for a minute, but nothing listens."""
    listener = gunicorn_like_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    browser = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    try:
        conn.close()  # the server hangs up first
        if left == "TIME-WAIT":
            browser.close()
        assert not _port_free(port), "a listening socket is in use"
        listener.close()
        deadline = time.monotonic() + 5
        while left not in _states(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left in _states(port) and "LISTEN" not in _states(port), _states(port)
        assert _port_free(port)
        with gunicorn_like_socket() as again:  # and gunicorn can indeed listen there
            again.bind(("127.0.0.1", port))
            again.listen()
    finally:
        browser.close()
        listener.close()


def test_a_port_something_listens_on_is_in_use_on_any_address():
    listener = gunicorn_like_socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    try:
        assert not _port_free(listener.getsockname()[1])
    finally:
        listener.close()


def test_a_dev_port_no_socket_can_have_is_one_sentence():
    """As ``PORT`` is: 1-65535 (0 would be a random port no one could find)."""
    result = Click().invoke(cli, ["dev", "--port", "70000"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port': 70000 is not in the range 1<=x<=65535." in result.output


# ------------------------------------------------- the client, against a web


def env_of(api) -> dict[str, str]:
    return {"BFF_API_URL": api.base_url, "BFF_API_KEY": api.key, "PATH": "/usr/bin:/bin"}


def bff(api, *args: str):
    """``bff`` in-process, as a user's shell would run it (stdout, stderr apart)."""
    return Click().invoke(cli, list(args), env=env_of(api), prog_name="bff")


def start(api, *args: str) -> subprocess.Popen:
    """``bff`` as a process, its first line read: the one naming the job."""
    proc = subprocess.Popen(
        [BFF, *args], env=env_of(api), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.first_line = proc.stdout.readline()
    return proc


def submitted(output: str) -> str:
    return re.search(r"^submitted (gen_\w+)$", output, re.M).group(1)


def broken_generate(ctx):
    raise StageFailed("REPLICATE_API_TOKEN not configured")


def fail(api, gen_id: str, monkeypatch) -> None:
    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, "generate", broken_generate)
        run_all(api.app, gen_id)
    assert load(api.app, gen_id)["status"] == "failed"


def completed(api) -> dict:
    gen_id = submitted(bff(api, "generate", "black wool coat").output)
    run_all(api.app, gen_id)
    gen = load(api.app, gen_id)
    assert gen["status"] == "completed"
    return gen


def assets_shown(stdout: str) -> list[tuple[str, str]]:
    """(the "asset …" line, the URL alone on the next line) of each image."""
    lines = stdout.splitlines()
    return [(lines[i - 1], line) for i, line in enumerate(lines) if URL.fullmatch(line)]


def ctrl_c(proc: subprocess.Popen, job_id: str) -> str:
    """Ctrl-C once ``proc`` follows ``job_id``; it must exit 130. Its stderr."""
    try:
        assert job_id in proc.first_line, proc.first_line + proc.stderr.read()
        time.sleep(1)  # following the job
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    return err


@pytest.mark.parametrize("command", ["generate", "refine"])
def test_ctrl_c_while_waiting_says_the_job_goes_on_and_how_to_look(api, command):
    if command == "generate":
        proc = start(api, "generate", "navy blazer", "--wait")
        gen_id = proc.first_line.split()[-1]
    else:
        gen = completed(api)
        gen_id = gen["id"]
        asset = str(gen["assets"][0]["id"])
        proc = start(api, "refine", gen_id, asset, "--upscale", "2", "--wait")
    err = ctrl_c(proc, gen_id)
    assert err == f"stopped waiting; {gen_id} goes on: bff generations show {gen_id}\n"
    shown = bff(api, "generations", "show", gen_id)
    assert shown.exit_code == 0 and shown.output.startswith(gen_id), shown.output


def test_ctrl_c_while_a_batch_is_followed_says_it_goes_on(api, tmp_path):
    looks = tmp_path / "looks.txt"
    looks.write_text("linen shirt\nwool coat\n")
    proc = start(api, "batch", str(looks), "--wait")
    batch_id = proc.first_line.split()[1].rstrip(":")
    assert batch_id.startswith("bat_"), proc.first_line
    err = ctrl_c(proc, batch_id)
    assert err.endswith(f"stopped waiting; {batch_id} goes on: bff batch download {batch_id} DIR\n")


def test_generate_wait_gives_each_image_its_id_beside_its_url(api):
    proc = start(api, "generate", "ivory linen shirt", "--count", "2", "--wait")
    gen_id = proc.first_line.split()[-1]
    try:
        run_all(api.app, gen_id)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assets = load(api.app, gen_id)["assets"]
    assert assets_shown(out) == [(f"asset {a['id']}:", a["url"]) for a in assets], out
    assert len(assets) == 2 and out.splitlines()[-1] == assets[-1]["url"]


def test_generations_show_gives_each_image_its_id_beside_its_url(api):
    gen = completed(api)
    original = gen["assets"][0]
    stage_refine = bff(api, "refine", gen["id"], str(original["id"]), "--upscale", "2")
    assert stage_refine.exit_code == 0, stage_refine.output
    run_all(api.app, gen["id"], ("refine",))
    upscaled = next(a for a in load(api.app, gen["id"])["assets"] if a["variant"] == "upscaled")
    shown = bff(api, "generations", "show", gen["id"])
    assert shown.exit_code == 0, shown.output
    size = f"{upscaled['width']}x{upscaled['height']}"
    assert assets_shown(shown.stdout) == [
        (f"asset {original['id']}:", original["url"]),
        (f"asset {upscaled['id']} upscaled from {original['id']}, {size}:", upscaled["url"]),
    ], shown.stdout


def test_generate_takes_a_persona_by_its_name(api):
    """Before, --persona took only an id, which neither the page nor bff shows."""
    import requests

    auth = {"Authorization": f"Bearer {api.key}"}
    body = {"name": "Riviera summer", "keywords": ["linen"]}
    persona = requests.post(f"{api.base_url}/api/personas", json=body, headers=auth, timeout=10)
    done = bff(api, "generate", "linen shirt", "--persona", "riviera summer")
    assert done.exit_code == 0, done.output
    assert load(api.app, submitted(done.output))["personaId"] == persona.json()["id"]


def test_refine_wait_gives_each_new_image_its_id_to_refine_again(api):
    """Before, it printed "upscaled  2048x2048  URL": the id that a cut-out of
    the upscaled image needs was only in ``generations show``."""
    gen = completed(api)
    original = gen["assets"][0]
    proc = start(api, "refine", gen["id"], str(original["id"]), "--upscale", "2", "--wait")
    try:
        assert gen["id"] in proc.first_line, proc.first_line + proc.stderr.read()
        run_all(api.app, gen["id"], ("refine",))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    [upscaled] = [a for a in load(api.app, gen["id"])["assets"] if a["variant"] == "upscaled"]
    size = f"{upscaled['width']}x{upscaled['height']}"
    assert assets_shown(out) == [
        (f"asset {upscaled['id']} upscaled from {original['id']}, {size}:", upscaled["url"])
    ], out


def test_a_failed_wait_says_how_to_retry_and_retry_wait_finishes_it(api, monkeypatch):
    proc = start(api, "generate", "olive trench coat", "--wait")
    gen_id = proc.first_line.split()[-1]
    try:
        fail(api, gen_id, monkeypatch)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert err == (
        "Error: failed at generate: REPLICATE_API_TOKEN not configured "
        f"(resume it: bff retry {gen_id})\n"
    )

    proc = start(api, "retry", gen_id, "--wait")
    try:
        assert proc.first_line == f"retrying {gen_id} from generate\n", proc.first_line
        run_all(api.app, gen_id)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    [asset] = load(api.app, gen_id)["assets"]
    assert "completed in local" in out
    assert assets_shown(out) == [(f"asset {asset['id']}:", asset["url"])], out
    assert out.splitlines()[-1] == asset["url"]  # the URL still ends the output


def test_retry_cancel_and_delete_say_what_the_api_said(api):
    gen_id = submitted(bff(api, "generate", "red wool coat").output)
    refused = bff(api, "retry", gen_id)
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: 409 conflict: only failed generations can be retried; this one is pending\n"
    )
    canceled = bff(api, "cancel", gen_id)
    assert (canceled.exit_code, canceled.stdout) == (0, f"canceled {gen_id}\n")
    assert load(api.app, gen_id)["status"] == "canceled"
    again = bff(api, "cancel", gen_id)
    assert again.exit_code == 1
    assert again.stderr == "Error: 409 conflict: generation is already canceled\n"
    deleted = bff(api, "delete", gen_id)
    assert (deleted.exit_code, deleted.stdout) == (0, f"deleted {gen_id}\n")
    gone = bff(api, "delete", gen_id)
    assert gone.exit_code == 1 and gone.stderr.startswith("Error: 404 not_found: "), gone.stderr
    assert len(gone.stderr.splitlines()) == 1


def test_delete_takes_the_images_too(api):
    gen = completed(api)
    folder = services(api.app).settings.media_root / "users"
    assert any(gen["id"] in str(p) for p in folder.rglob("*.png"))
    deleted = bff(api, "delete", gen["id"])
    assert deleted.exit_code == 0, deleted.output
    assert not any(gen["id"] in str(p) for p in folder.rglob("*.png"))


def test_a_photo_alone_is_a_submit(api, tmp_path):
    photo = tmp_path / "dress.png"
    photo.write_bytes(photo_bytes((80, 120), "teal"))
    done = bff(api, "generate", "--image", str(photo))
    assert done.exit_code == 0, done.output
    gen = load(api.app, submitted(done.stdout))
    assert gen["mode"] == "image" and gen["prompt"]["original"] is None


@pytest.mark.parametrize("args", [[], [""], ["   "]])
def test_no_prompt_and_no_photo_is_one_sentence(api, args):
    refused = bff(api, "generate", *args)
    assert refused.exit_code == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: give a PROMPT, or a garment photo with --image PATH"]


@pytest.mark.parametrize("name", ["", "   "])
def test_a_user_needs_a_name(runner, app, name):
    result = runner.invoke(["users", "create", name])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "Error: Invalid value for NAME: empty or only blanks"
    with services(app).db.session() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


def test_the_new_commands_are_listed(api):
    shown = bff(api, "--help")
    for ours in ("retry", "cancel", "delete"):
        assert f"\n  {ours} " in shown.stdout, shown.stdout


@pytest.mark.parametrize(
    "args", [["--rating", "4", "--comment", "x"], ["--heart", "--rating", "2"]]
)
def test_feedback_takes_one_kind_at_a_time(api, args):
    """The API refuses a rating sent with another kind; say so before sending."""
    refused = bff(api, "feedback", "gen_x", *args)
    assert refused.exit_code == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: give one of --heart, --outlier, --rating N or --comment TEXT"]


def test_retry_names_the_stage_even_when_a_worker_took_it_already(monkeypatch):
    """The 202 is read after the chain is sent: on a fast worker the stage it
    resumes is running by then, and the next one was named instead."""
    from click.testing import CliRunner

    from app.cli import jobs

    stages = [("optimize", "completed"), ("generate", "running"), ("store", "pending")]
    body = {"stages": [{"name": n, "status": st} for n, st in stages]}
    monkeypatch.setattr(jobs, "_json", lambda *_a: body)
    out = CliRunner().invoke(jobs.retry, ["gen_1"]).output
    assert out == "retrying gen_1 from generate\n"
