"""The ``bff`` command: a Flask CLI group (``bff db upgrade``, ``bff users …``,
``bff generate …``, ``bff dev``)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup

ROOT = Path(__file__).resolve().parents[2]


def upgrade_database(url: str) -> None:
    import logging

    # Before alembic loads: it announces each of its plugins at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

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


def register_commands(app: Flask) -> None:
    from app.cli.dev import dev

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
