"""Alembic environment: the URL comes from the app's settings (DATABASE_URL)."""

import logging
import time

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

import app.domain.bookkeeping  # noqa: F401  (its tables on the metadata)
import app.domain.spend  # noqa: F401  (charges)
import app.domain.tombstones  # noqa: F401  (submission_tombstones)
import app.pipeline.stops  # noqa: F401  (provider_stops)
import app.platform.metric_rollup  # noqa: F401  (metric_rollups)
import app.webhooks  # noqa: F401  (webhook_deliveries on the metadata)
from app.domain.models import Base
from app.platform.config import Settings
from app.platform.db import make_engine

config = context.config
target_metadata = Base.metadata
log = logging.getLogger("app.migrations")
# The advisory lock that runs one migration of a database at a time (any
# fixed 64-bit number that nothing else of ours locks).
MIGRATION_LOCK = 0x6266665F6D6967  # "bff_mig"


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def _one_at_a_time(connection: Connection) -> None:
    """Wait for any other migration of this PostgreSQL database to finish.
    Two releases at once (two containers, a retried deploy) would otherwise
    both create the first tables and one fail on a duplicate. A session lock,
    not a transaction's: a migration that builds an index CONCURRENTLY commits
    halfway (autocommit_block). It ends with the connection (engine.dispose).

    Polled, each try its own short transaction, rather than waited for with
    ``pg_advisory_lock``: that index build waits for every open transaction
    to end, the waiter's too, and PostgreSQL would call it a deadlock."""
    if connection.dialect.name != "postgresql":
        return  # SQLite lets one writer in at a time anyway
    try_lock, said = text("SELECT pg_try_advisory_lock(:key)"), False
    while True:
        got = connection.execute(try_lock, {"key": MIGRATION_LOCK}).scalar()
        connection.commit()  # the lock outlives the transaction
        if got:
            return
        if not said:
            log.warning("another migration of this database is running: waiting for it to finish")
            said = True
        time.sleep(1)


def run_migrations_online() -> None:
    url = _url()
    if url.startswith("sqlite"):
        from pathlib import Path

        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    # No statement timeout (0): building an index on a big table may take
    # longer than any API request is allowed. But a lock waited for at most
    # 10 s: an ALTER queued behind a long transaction would queue every query
    # on that table behind itself, and stall the service; the release fails
    # instead, to be run again.
    engine = make_engine(url, statement_timeout=0, lock_timeout=10)
    try:
        with engine.connect() as connection:
            _one_at_a_time(connection)
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()  # closes the connection, so a failed run leaves no lock held


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
