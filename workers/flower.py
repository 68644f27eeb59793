"""Flower never runs without credentials, however it is started: through
``flowerconfig.py`` (the Procfile's and compose's ``--conf``) or as plain
``celery -A workers flower`` from anywhere, where that file is not read."""

from __future__ import annotations

import os
import sys

import click


def credentials() -> list[str]:
    """``FLOWER_BASIC_AUTH``: ``user:password``, or several separated by commas
    (Flower's own reading of it); the process exits without them."""
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not _complete(auth):
        sys.exit("Flower refuses to start without credentials: set FLOWER_BASIC_AUTH=user:password")
    return auth.split(",")


def _complete(auth: str) -> bool:
    """Every comma-separated entry has a user and a password."""
    pairs = [entry.partition(":") for entry in auth.split(",")]
    return all(user and password for user, _, password in pairs)


def guard(argv: list[str] | None = None) -> None:
    """Run as ``celery -A workers …`` loads the app: Celery's command group
    has already named its subcommand (click's ``invoked_subcommand``); for
    ``flower``, check the credentials before Flower reads any of its own
    options (Flower itself takes ``FLOWER_BASIC_AUTH`` from the environment,
    or ``--basic-auth`` from its command line; ``--help`` starts nothing)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.invoked_subcommand != "flower":
        return
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args:
        return
    given = (a.partition("=")[2] for a in args if a.startswith(("--basic_auth=", "--basic-auth=")))
    if not any(_complete(auth) for auth in given):
        credentials()
    _readable(args)


def _readable(args: list[str]) -> None:
    """What Flower reads before it starts is there and a number where it must
    be: else one line, not the traceback Flower gives (its --conf is read
    from the current folder; it parses FLOWER_PORT itself, before --conf)."""
    conf = next((a.partition("=")[2] for a in args if a.startswith("--conf=")), None)
    if conf and not os.path.isfile(conf):
        sys.exit(f"Flower's --conf={conf} is not in {os.getcwd()}: start it from the checkout")
    port = os.environ.get("FLOWER_PORT")
    if port is not None and not port.isdigit():  # set but empty too: int("") for both
        sys.exit(f"FLOWER_PORT={port!r} cannot be used: it must be a port number")
