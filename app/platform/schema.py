"""Is the database's schema the one this code was written for? Alembic's
revision table against the migration scripts' heads, for ``/health`` and
``/metrics``: a database nobody migrated answers ``SELECT 1`` happily while
every API call fails on a missing table.

The scripts' heads are read once per process (they ship with the code); the
database's revision is one small SELECT per check.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default; migrations/env.py keeps it


class SchemaOutOfDate(Exception):
    """The database is not migrated to the code's head. The message names both
    revisions and the fix; it holds no secret, so /health may show it."""


def alembic_config(url: str) -> Any:
    """Alembic's configuration for the database at ``url`` (no alembic.ini)."""
    # Before alembic loads: it announces each of its plugins at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@cache
def code_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(the scripts' heads, every revision the scripts know), read once."""
    cfg = alembic_config("sqlite://")  # first: it quiets alembic before alembic loads
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(cfg)
    known = frozenset(rev.revision for rev in scripts.walk_revisions())
    return frozenset(scripts.get_heads()), known


def database_heads(conn: Connection) -> frozenset[str]:
    """The revisions the database is at: empty if it was never migrated."""
    try:
        return frozenset(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    except DBAPIError:
        # Only now the dearer question (a catalogue query), on a clean
        # transaction (PostgreSQL refuses statements in an aborted one). A
        # database that went away fails here too, and says so.
        conn.rollback()
        if inspect(conn).has_table(VERSION_TABLE):
            raise
        return frozenset()


def check_schema(conn: Connection) -> None:
    """Raise ``SchemaOutOfDate`` when the database is behind the code (never
    migrated, or at an older revision). A database at a revision this code
    does not know is ahead of it (a deploy's release ran the next version's
    migrations while this process still serves): not an error here, or a
    rolling deploy would take every old process out before a new one is up."""
    at = database_heads(conn)
    heads, known = code_revisions()
    if at == heads or not at <= known:
        return
    now = ", ".join(sorted(at)) or "none (never migrated)"
    raise SchemaOutOfDate(
        f"database schema at {now}, code needs {', '.join(sorted(heads))}: run bff db upgrade"
    )
