"""The ``bff`` command: one click group of its own (not Flask's: no ``run``,
``shell`` or ``routes``). Administration works on the configured database
(``admin``), ``bff dev`` runs the embedded system (``dev``), and the rest
talks to a running API over HTTP as any client would (``client``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# The server's libraries load in the commands that use them: the client
# commands (generate, status, batch, ...) start in a fraction of the time.
if TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parents[2]


def upgrade_database(url: str) -> None:
    from app.platform.schema import alembic_config

    cfg = alembic_config(url)  # first: it quiets alembic before alembic loads
    from alembic import command

    command.upgrade(cfg, "head")


def the_app() -> Flask:
    """The application of the command being run: the one a test passed as
    ``obj``, else one built from the environment (a configuration it cannot
    run with is one sentence, not a traceback)."""
    ctx = click.get_current_context()
    from flask import Flask

    if not isinstance(ctx.obj, Flask):
        from sqlalchemy.exc import ArgumentError

        from app import create_app
        from app.platform.config import ConfigError

        try:
            ctx.obj = create_app()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except ArgumentError as exc:  # SQLAlchemy could not parse DATABASE_URL
            raise click.ClickException(f"DATABASE_URL is not a database URL: {exc}") from None
    return ctx.obj


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A database that is not there or not migrated is one sentence."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from app.platform.derived import hide_passwords

    # (and a ?password=… in its query, which SQLAlchemy's hiding leaves)
    where = hide_passwords(make_url(url).render_as_string(hide_password=True))
    try:
        yield
    except DBAPIError as exc:
        text = str(exc.orig).lower()
        if re.search(r'database "[^"]*" does not exist', text):  # the server has none so named
            raise click.ClickException(
                f"the database {where} does not exist: create it (createdb), then 'bff db upgrade'"
            ) from None
        # A table or column the code needs (not a role, as in 'role "x" does
        # not exist': upgrading would not help).
        if "no such table" in text or re.search(r'(relation|column) "[^"]*" does not exist', text):
            raise click.ClickException(
                f"the database {where} is not set up: run 'bff db upgrade' first"
            ) from None
        first = (str(exc.orig).strip() or type(exc).__name__).splitlines()[0]
        raise click.ClickException(f"cannot use the database {where}: {first}") from None


def with_app(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command that needs the application: it gets it as its first argument."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        app = the_app()
        with app.app_context(), database_errors(app.extensions["bff"].settings.database_url):
            return fn(app, *args, **kwargs)

    return run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("designer-bff"), prog_name="bff")
def cli() -> None:
    """Designer BFF: garment photo or prompt in, finished stored images out."""


def main() -> None:
    cli(prog_name="bff")


from app.cli import admin, batches, client, dev, jobs  # noqa: E402  (they use the helpers above)

for _command in (*admin.COMMANDS, dev.dev, *client.COMMANDS, *jobs.COMMANDS, batches.batch_cli):
    cli.add_command(_command)
