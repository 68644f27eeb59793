"""The migrations build exactly the schema the models describe, on both
databases: a model change without its migration (or the reverse) fails here."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import app.webhooks  # noqa: F401  (registers webhook_deliveries on the metadata)
from app.cli import upgrade_database
from app.domain.models import Base


def _differences(url: str) -> list:
    upgrade_database(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_sqlite_schema_matches_the_models(tmp_path):
    assert _differences(f"sqlite:///{tmp_path / 'schema.db'}") == []


@pytest.mark.usefixtures("service_env")
def test_postgres_schema_matches_the_models(service_env):
    assert _differences(service_env["DATABASE_URL"]) == []


def test_no_index_duplicates_a_unique_constraint_on_generation_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade_database(url)
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        insp = inspect(engine)
        for table in ("generation_stages", "generation_assets"):
            names = {ix["name"] for ix in insp.get_indexes(table)}
            assert f"ix_{table}_generation_id" not in names, table
    finally:
        engine.dispose()
