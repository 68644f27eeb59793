"""Migrations on PostgreSQL that a deploy can run again: an index built
CONCURRENTLY (outside a transaction) that fails for want of a lock leaves
nothing else committed, and the next ``bff db upgrade`` finishes the job; two
run at once take turns. And /health tells a database nobody migrated."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from app import create_app
from app.cli import upgrade_database
from app.platform.schema import alembic_config
from tests.support.embedded import BFF, SERVICE_VARS
from tests.support.services import postgres_ok, scratch_postgres_db, unavailable

pytestmark = pytest.mark.services


def test_an_upgrade_whose_index_build_timed_out_runs_again():
    if not postgres_ok():
        unavailable("PostgreSQL on 127.0.0.1:5432")
    with scratch_postgres_db() as url:
        upgrade_database(url)
        command.downgrade(alembic_config(url), "0015")
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain) as writer:  # a worker mid-transaction on the stages
            writer.execute("LOCK TABLE generation_stages IN ROW EXCLUSIVE MODE")
            with pytest.raises(Exception, match="lock timeout"):
                upgrade_database(url)  # waits its 10 s for the lock, then gives up
            writer.rollback()
        upgrade_database(url)
        with psycopg.connect(plain) as conn:
            [(version,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            valid = conn.execute(
                "SELECT indisvalid FROM pg_index"
                " WHERE indexrelid = 'ix_generation_stages_finished'::regclass"
            ).fetchall()
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert version == head and valid == [(True,)]  # 0016's index, and all after it


def test_two_upgrades_at_once_take_turns(tmp_path):
    """Two releases at once on an empty database: without a lock both create
    the first tables and one fails (duplicate key in pg_type); with it the
    second waits, then finds the database at head."""
    if not postgres_ok():
        unavailable("PostgreSQL on 127.0.0.1:5432")
    with scratch_postgres_db() as url:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
        env |= {"DATABASE_URL": url, "BFF_VAR_DIR": str(tmp_path / "var")}
        runs = [
            subprocess.Popen(
                [BFF, "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain) as conn:
            versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert versions == [(head,)]


def test_health_says_a_database_nobody_migrated_is_not_ok(app_config):
    if not postgres_ok():
        unavailable("PostgreSQL on 127.0.0.1:5432")
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    with scratch_postgres_db() as url:
        app = create_app({**app_config, "DATABASE_URL": url})
        resp = app.test_client().get("/health")
        assert resp.status_code == 503
        assert resp.get_json()["checks"]["database"] == (
            f"error: database schema at none (never migrated), code needs {head}:"
            " run bff db upgrade"
        )
        upgrade_database(url)
        command.downgrade(alembic_config(url), "-1")
        before = ScriptDirectory.from_config(alembic_config(url)).get_revision(head).down_revision
        resp = app.test_client().get("/health")
        assert resp.get_json()["checks"]["database"] == (
            f"error: database schema at {before}, code needs {head}: run bff db upgrade"
        )
        upgrade_database(url)
        resp = app.test_client().get("/health")
        assert resp.status_code == 200, resp.get_json()
        app.extensions["bff"].db.dispose()  # before the scratch database is dropped
