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

import click
import requests
from flask import Flask

from app.cli import ROOT, upgrade_database, with_app


def _start(port: int, concurrency: int) -> list[subprocess.Popen]:
    """A Celery worker (both queues, beat inside) and gunicorn, each in a
    process group of its own so a stop reaches their children too."""
    env = {**os.environ, "PORT": str(port)}
    bin_dir = Path(sys.executable).parent
    worker = [str(bin_dir / "celery"), "-A", "workers", "worker", "-B"]
    worker += ["-Q", "pipeline,generation", "-P", "threads", "-c", str(concurrency)]
    web = [str(bin_dir / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
    web += ["-b", f"127.0.0.1:{port}", "app:create_app()"]
    return [
        subprocess.Popen([*worker, "--loglevel", "INFO"], env=env, start_new_session=True),
        subprocess.Popen(web, env=env, start_new_session=True),
    ]


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
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


@click.command("dev")
@click.option("--port", type=int, default=None, help="API port (default: PORT or 3001)")
@click.option("--concurrency", default=4, show_default=True)
@with_app
def dev(app: Flask, port: int | None, concurrency: int) -> None:
    """Migrate and run API + worker on the embedded default; Ctrl-C stops all."""
    services = app.extensions["bff"]
    port = port or services.settings.port
    if not _port_free(port):
        raise click.ClickException(f"port {port} is in use: stop what runs there, or set PORT")
    upgrade_database(services.settings.database_url)
    key = _dev_key(app)
    procs = _start(port, concurrency)

    def stop(*_: object) -> None:
        _stop(procs)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base)
    bff = Path(sys.executable).parent / "bff"
    click.echo(
        f"\nDesigner BFF is running at {base} (Ctrl-C stops it).\n"
        f"Try:  BFF_API_URL={base} BFF_API_KEY={key} {bff} generate "
        '"emerald silk slip dress" --wait\n'
        f"API key (user 'dev'):\n{key}"
    )
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    click.echo("a process exited; stopping the rest", err=True)
    stop()
