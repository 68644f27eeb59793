"""Flower never runs without credentials, however it is started: through
``flowerconfig.py`` (the Procfile's and compose's ``--conf``) or as plain
``celery -A workers flower`` from anywhere, where that file is not read."""

from __future__ import annotations

import os
import sys

import click


def credentials() -> str:
    """``FLOWER_BASIC_AUTH`` (``user:password``); the process exits without it."""
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    user, _, password = auth.partition(":")
    if not (user and password):
        sys.exit("Flower refuses to start without credentials: set FLOWER_BASIC_AUTH=user:password")
    return auth


def guard() -> None:
    """Run as ``celery -A workers …`` loads the app: Celery's command group
    has already named its subcommand (click's ``invoked_subcommand``); for
    ``flower``, check the credentials before Flower reads any of its own
    options (Flower itself takes ``FLOWER_BASIC_AUTH`` from the environment)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.invoked_subcommand == "flower":
        credentials()
