"""``bff dev`` (``make dev``): migrate, then run the API and a worker (with
beat) on the embedded default until Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import click
import requests

from app.cli import ROOT, upgrade_database, with_app

if TYPE_CHECKING:
    from flask import Flask


def _start(port: int, concurrency: int, procs: dict[str, subprocess.Popen]) -> None:
    """A Celery worker (both queues, beat inside) and gunicorn (``web``), each
    in a process group of its own so a stop reaches their children too; into
    ``procs`` as each starts."""
    env = {**os.environ, "PORT": str(port)}
    bin_dir = Path(sys.executable).parent
    worker = [str(bin_dir / "celery"), "-A", "workers", "worker", "-B"]
    worker += ["-Q", "pipeline,generation", "-P", "threads", "-c", str(concurrency)]
    worker += ["--loglevel", "INFO"]
    web = [str(bin_dir / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
    web += ["-b", f"127.0.0.1:{port}", "app:create_app()"]
    procs["worker"] = subprocess.Popen(worker, env=env, start_new_session=True)
    procs["web"] = subprocess.Popen(web, env=env, start_new_session=True)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(p.pid, sig)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    # One shared deadline: waiting 10 s per process could outlast a
    # supervisor's own stop timeout when the machine is busy.
    deadline = time.monotonic() + 10
    for p in procs:
        with suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_group(p, signal.SIGKILL)  # stragglers: workers of a master gone
        p.wait()


def _wait_ready(base: str) -> None:
    for _ in range(100):
        with suppress(requests.RequestException):
            if requests.get(base + "/health", timeout=1).ok:
                return
        time.sleep(0.2)


def _port_free(port: int) -> bool:
    """Whether gunicorn can bind the port: probed as gunicorn binds, with
    SO_REUSEADDR, so the TIME-WAIT and FIN-WAIT-2 connections a stopped server
    leaves for a minute do not count, only a socket that listens."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _first_exit(procs: dict[str, subprocess.Popen]) -> tuple[str, int]:
    """Wait until one of ``procs`` exits: its name and exit status."""
    while True:
        for name, p in procs.items():
            if (code := p.poll()) is not None:
                return name, code
        time.sleep(0.5)


def _how(code: int) -> str:
    """An exit status in words: "exit status 3" or "signal SIGKILL"."""
    if code >= 0:
        return f"exit status {code}"
    with suppress(ValueError):
        return f"signal {signal.Signals(-code).name}"
    return f"signal {-code}"


def _dev_key(app: Flask) -> str:
    """The development user's key, kept in ``var/dev-api-key`` so a restart
    does not hand out a new one (a key that no longer works is replaced)."""
    from app.api.auth import authenticate_id, create_user

    services = app.extensions["bff"]
    path = services.settings.var_dir / "dev-api-key"
    with services.db.session() as session:
        if path.exists() and authenticate_id(session, key := path.read_text().strip()):
            return key
        _, key = create_user(session, "dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _keep_private(var: Path) -> None:
    """var/ holds the database (webhook secrets), the broker's messages and
    every upload: this account's alone, as what is made in it (the processes
    inherit the umask). A folder everyone may write to (BFF_VAR_DIR=/tmp) or
    another account's is refused: another user could read the secrets or
    plant the broker's folder first; its mode is its owner's to set."""
    os.umask(0o077)
    var.mkdir(parents=True, exist_ok=True)
    st = var.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o002:
        raise click.ClickException(
            f"{var} (BFF_VAR_DIR) is shared with other accounts: it would hold this"
            " server's database and messages; name a folder of your own"
        )
    var.chmod(0o700)


@click.command("dev")
@click.option("--port", type=click.IntRange(1, 65535), help="API port (default: PORT or 3001)")
@click.option("--concurrency", default=4, show_default=True)
@with_app
def dev(app: Flask, port: int | None, concurrency: int) -> None:
    """Migrate and run API + worker on the embedded default; Ctrl-C stops all."""
    services = app.extensions["bff"]
    port = port or services.settings.port
    if not _port_free(port):
        raise click.ClickException(f"port {port} is in use: stop what runs there, or set PORT")
    _keep_private(services.settings.var_dir)
    upgrade_database(services.settings.database_url)
    key = _dev_key(app)
    procs: dict[str, subprocess.Popen] = {}

    def stop(*_: object) -> None:  # Ctrl-C: a clean stop
        _stop(list(procs.values()))
        sys.exit(0)

    # Before the start: a Ctrl-C while it starts stops what it started so far.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _start(port, concurrency, procs)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base)
    bff = Path(sys.executable).parent / "bff"
    click.echo(
        f"\nDesigner BFF is running at {base} (Ctrl-C stops it).\n"
        f"Try:  BFF_API_URL={base} BFF_API_KEY={key} {bff} generate "
        '"emerald silk slip dress" --wait\n'
        f"API key (user 'dev'):\n{key}"
    )
    name, code = _first_exit(procs)
    click.echo(f"Error: {name} exited ({_how(code)}); stopping the rest", err=True)
    _stop(list(procs.values()))
    sys.exit(1)  # not a clean stop: make dev says so
