"""Alembic environment: the URL comes from the app's settings (DATABASE_URL)."""

from alembic import context

import app.domain.bookkeeping  # noqa: F401  (its tables on the metadata)
import app.domain.spend  # noqa: F401  (charges)
import app.pipeline.stops  # noqa: F401  (provider_stops)
import app.platform.metric_rollup  # noqa: F401  (metric_rollups)
import app.webhooks  # noqa: F401  (webhook_deliveries on the metadata)
from app.domain.models import Base
from app.platform.config import Settings
from app.platform.db import make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


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

    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
