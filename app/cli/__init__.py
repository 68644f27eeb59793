"""The ``bff`` command: a Flask CLI group (``bff db upgrade``, ``bff users …``,
``bff generate …``, ``bff dev``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import requests
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup

ROOT = Path(__file__).resolve().parents[2]


def upgrade_database(url: str) -> None:
    import logging

    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


db_cli = AppGroup("db", help="Database migrations.")
users_cli = AppGroup("users", help="Users and their API keys.")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database (DATABASE_URL) to head."""
    upgrade_database(current_app.extensions["bff"].settings.database_url)
    click.echo("database is at head")


@users_cli.command("create")
@click.argument("name")
def users_create(name: str) -> None:
    """Create NAME (or add a key to it) and print a new API key, shown once."""
    from app.api.auth import create_user

    with current_app.extensions["bff"].db.session() as session:
        user, key = create_user(session, name)
        user_id = user.id
    click.echo(f"user {name} (id {user_id}); API key, shown once:")
    click.echo(key)


@users_cli.command("revoke")
@click.argument("key_prefix")
def users_revoke(key_prefix: str) -> None:
    """Revoke every active key starting with KEY_PREFIX (e.g. bff_1a2b3c4d)."""
    from app.api.auth import revoke

    with current_app.extensions["bff"].db.session() as session:
        n = revoke(session, key_prefix)
    if not n:
        raise click.ClickException(f"no active key with prefix {key_prefix}")
    click.echo(f"revoked {n} key(s)")


@users_cli.command("cap")
@click.argument("name")
@click.argument("amount", required=False)
def users_cap(name: str, amount: str | None) -> None:
    """Set NAME's daily spend cap in USD (omit AMOUNT to remove it)."""
    from decimal import Decimal, InvalidOperation

    from sqlalchemy import select

    from app.domain.models import User

    try:
        cap = Decimal(amount) if amount is not None else None
    except InvalidOperation:
        raise click.BadParameter(f"{amount!r} is not an amount in USD") from None
    with current_app.extensions["bff"].db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user named {name}")
        user.daily_spend_cap = cap
    click.echo(f"{name}: daily cap {'none' if cap is None else f'${cap}'}")


@click.command("dev")
@click.option("--port", type=int, default=None, help="API port (default: PORT or 3001)")
@click.option("--concurrency", default=4, show_default=True)
def dev(port: int | None, concurrency: int) -> None:
    """Migrate and run API + worker on the embedded default; Ctrl-C stops all."""
    from app.api.auth import create_user

    app = current_app
    settings = app.extensions["bff"].settings
    port = port or settings.port
    upgrade_database(settings.database_url)
    with app.extensions["bff"].db.session() as session:
        _, key = create_user(session, "dev")
    env = {**os.environ, "PORT": str(port)}
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [
                str(bin_dir / "celery"),
                "-A",
                "workers",
                "worker",
                "-B",
                "-Q",
                "pipeline,generation",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "--loglevel",
                "INFO",
            ],
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                str(bin_dir / "gunicorn"),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "-b",
                f"127.0.0.1:{port}",
                "app:create_app()",
            ],
            env=env,
            start_new_session=True,
        ),
    ]

    def signal_group(p: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass

    def stop(*_: object) -> None:
        # Each child runs in its own process group, so a stop reaches gunicorn's
        # and celery's workers too, and nothing outlives `make dev`.
        for p in procs:
            signal_group(p, signal.SIGTERM)
        # One shared deadline: waiting 10 s per process could outlast a
        # supervisor's own stop timeout when the machine is busy.
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(p, signal.SIGKILL)  # stragglers: workers of a master gone
            p.wait()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(base + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    click.echo(
        f"\nDesigner BFF is running at {base} (Ctrl-C stops it).\n"
        f'Try:  BFF_API_KEY={key} bff generate "emerald silk slip dress" --wait\n'
        f"API key (user 'dev'):\n{key}",
        err=False,
    )
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    click.echo("a process exited; stopping the rest", err=True)
    stop()


def register_commands(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(dev)


def main() -> None:
    from app import create_app

    cli = FlaskGroup(
        create_app=lambda: create_app(),
        add_default_commands=True,
        load_dotenv=False,
        help="Designer BFF",
    )
    from app.cli.client import generate, generations_cli

    cli.add_command(generate)
    cli.add_command(generations_cli)
    cli.main(prog_name="bff")
