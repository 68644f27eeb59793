"""The ``bff`` command: users, keys and migrations. (``bff generate`` against a
running system is in tests/integration/test_cli_generate.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine

import app.domain.bookkeeping  # noqa: F401  (registers its tables on the metadata)
import app.domain.tombstones  # noqa: F401  (registers submission_tombstones)
import app.webhooks  # noqa: F401  (registers webhook_deliveries on the metadata)
from app.cli import upgrade_database
from app.domain.models import Base
from app.platform.config import ConfigError, Settings
from app.platform.schema import alembic_config, code_revisions
from tests.conftest import CLEAN

BFF = str(Path(sys.executable).parent / "bff")
KEY = re.compile(r"bff_[0-9a-f]{8}_\S+")


def create_key(runner, name: str) -> str:
    result = runner.invoke(args=["users", "create", name])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert KEY.fullmatch(lines[-1]), result.output  # the key, alone on the last line
    assert lines[-1] not in "\n".join(lines[:-1])  # and shown once
    return lines[-1]


def test_users_create_prints_a_working_key(runner, client):
    key = create_key(runner, "carol")
    resp = client.get("/api/generate", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    # A second key for the same user: both work, they see the same generations.
    key2 = create_key(runner, "carol")
    assert key2 != key
    h1, h2 = ({"Authorization": f"Bearer {k}"} for k in (key, key2))
    gen = client.post("/api/generate/from-prompt", json={"prompt": "x"}, headers=h1).get_json()
    assert client.get(f"/api/generate/{gen['id']}", headers=h2).status_code == 200


def test_users_revoke(runner, client):
    key = create_key(runner, "dave")
    other = create_key(runner, "erin")
    prefix = "_".join(key.split("_")[:2])
    result = runner.invoke(args=["users", "revoke", prefix])
    assert result.exit_code == 0, result.output
    assert "revoked 1" in result.output
    assert key.split("_", 2)[2] not in result.output  # never the secret
    for k, status in ((key, 401), (other, 200)):
        assert (
            client.get("/api/generate", headers={"Authorization": f"Bearer {k}"}).status_code
            == status
        )
    again = runner.invoke(args=["users", "revoke", prefix])
    assert again.exit_code != 0 and "no active key" in again.output
    whole = runner.invoke(args=["users", "revoke", other])  # the key pasted whole
    assert whole.exit_code == 0 and "revoked 1" in whole.output, whole.output
    assert other.split("_", 2)[2] not in whole.output
    twice = runner.invoke(args=["users", "revoke", other])  # no longer active
    assert twice.exit_code == 1
    assert twice.output.strip() == f"Error: no active key with prefix {other[:12]}"


def test_a_name_longer_than_the_column_is_refused_as_such(runner):
    result = runner.invoke(args=["users", "create", "x" * 121])
    assert result.exit_code == 2
    assert "Invalid value for NAME: longer than 120 characters" in result.output
    assert runner.invoke(args=["users", "create", "x" * 120]).exit_code == 0


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("ann\tlee", "holds a control character (U+0009)"),
        ("ann\nlee", "holds a control character (U+000A)"),
        ("ann\x1b[31mlee", "holds a control character (U+001B)"),
        ("ann\x85lee", "holds a control character (U+0085)"),
        ("ann\u2028lee", "holds a control character (U+2028)"),
        ("ann\udcfflee", "not valid UTF-8"),  # a byte not UTF-8 on the command line
    ],
    ids=["tab", "newline", "escape", "nel", "line-separator", "not-utf8"],
)
def test_a_name_that_would_break_a_listing_is_refused(runner, name, said):
    """Names are printed one to a line (``bff users list``, logs)."""
    result = runner.invoke(args=["users", "create", name])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for NAME: {said}" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(args=["users", "list"]).output == "no users yet: bff users create NAME\n"


def test_a_name_of_any_script_with_inner_spaces_is_kept(runner):
    name = "Zoë Ångström 张伟 👩\u200d🎨"  # a zero-width joiner is no control character
    assert runner.invoke(args=["users", "create", name]).exit_code == 0
    assert runner.invoke(args=["users", "list"]).output.startswith(f"{name} (id 1)")


def test_users_list_names_each_users_key_prefixes(runner):
    assert runner.invoke(args=["users", "list"]).output == "no users yet: bff users create NAME\n"
    kept, gone = create_key(runner, "fay"), create_key(runner, "fay")
    runner.invoke(args=["users", "revoke", gone])
    assert runner.invoke(args=["users", "cap", "fay", "2.5"]).exit_code == 0
    result = runner.invoke(args=["users", "list"])
    assert result.exit_code == 0, result.output
    prefix = lambda key: "_".join(key.split("_")[:2])  # noqa: E731
    assert result.output.splitlines() == [
        f"fay (id 1): cap $2.5000, $0.00 paid or held today; keys {prefix(kept)} [{prefix(gone)}]"
    ]
    assert kept.split("_", 2)[2] not in result.output  # never the secret


def test_providers_check_fails_when_a_configured_key_cannot_be_checked(app_config):
    from app import create_app
    from tests.conftest import CliRunner

    nowhere = "http://127.0.0.1:9"  # Replicate unreachable (discard: nothing listens)
    app = create_app({**app_config, "REPLICATE_API_TOKEN": "r8_x", "REPLICATE_BASE_URL": nowhere})
    result = CliRunner(app).invoke(["providers", "check"])
    assert result.exit_code == 1, result.output
    assert "google-imagen      UNKNOWN could not check" in result.output
    assert "3 could not be checked" in result.output  # the three Replicate models
    assert "local              -       needs no key" in result.output


def test_providers_check_asks_replicate_once_for_all_its_models(app_config, fake, monkeypatch):
    """The three Replicate models share one token and one account endpoint."""
    from app import create_app
    from app.providers import verify
    from tests.conftest import REPLICATE_TOKEN, CliRunner

    asked, real = [], verify.check
    monkeypatch.setattr(verify, "check", lambda pid, s: asked.append(pid) or real(pid, s))
    env = {"REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": fake.url}
    result = CliRunner(create_app({**app_config, **env})).invoke(["providers", "check"])
    assert result.exit_code == 0, result.output
    for model in ("google-imagen", "flux-pro", "nano-banana"):
        assert f"{model:<18} ok      REPLICATE_API_TOKEN" in result.output
    assert sum(verify.PROVIDERS[pid].api.startswith("replicate") for pid in asked) == 1


def test_bff_is_a_command_of_its_own_with_a_version():
    done = subprocess.run([BFF, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flask_command in ("run", "shell", "routes"):
        assert f"\n  {flask_command} " not in done.stdout, done.stdout
    for ours in ("db", "users", "dev", "generate", "generations"):
        assert f"\n  {ours} " in done.stdout, done.stdout
    shown = subprocess.run([BFF, "--version"], capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == f"bff, version {version('designer-bff')}"


def test_a_negative_cap_is_refused(runner):
    create_key(runner, "gina")
    for args in (["gina", "--", "-5"], ["gina", "-5"], ["gina", "-0.5"]):
        result = runner.invoke(args=["users", "cap", *args])
        assert result.exit_code == 2 and "give 0 or more USD" in result.output, result.output
    assert "Usage: " in runner.invoke(args=["users", "cap", "--help"]).output


def test_a_cap_is_confirmed_as_it_is_kept(runner):
    """The column keeps 4 places: the line says what was stored, rounded down,
    and a cap too big for it is refused rather than mangled."""
    create_key(runner, "hana")
    result = runner.invoke(args=["users", "cap", "hana", "0.123456"])
    assert result.exit_code == 0 and result.output == "hana: daily cap $0.1234\n", result.output
    listed = runner.invoke(args=["users", "list"]).output
    assert "hana (id 1): cap $0.1234," in listed, listed
    too_big = runner.invoke(args=["users", "cap", "hana", "1e30"])
    assert too_big.exit_code == 2, too_big.output
    assert "1e30 is more than a cap holds: 999999.9999" in too_big.output
    assert "hana (id 1): cap $0.1234," in runner.invoke(args=["users", "list"]).output


def test_a_database_that_is_not_set_up_is_one_sentence(tmp_path):
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    done = bff(["users", "create", "henry"], env, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: the database sqlite:///{tmp_path / 'empty.db'} is not set up: "
        "run 'bff db upgrade' first"
    ]
    assert not (tmp_path / "var").exists()  # nothing left behind in the working directory


@pytest.mark.parametrize(
    "var,raw,why",
    [
        ("BFF_STAGE_MAX_ATTEMPTS", "abc", "invalid literal"),
        ("PORT", "http", "invalid literal"),
        ("BFF_SUBMIT_RATE_LIMIT", "x/y", "invalid literal"),
        ("BFF_MAINTENANCE_INTERVAL", "0", "it must be more than 0"),
        ("BFF_STALL_TIMEOUT", "-5", "it must be more than 0"),
        ("BFF_DB_STATEMENT_TIMEOUT", "-1", "it must be from 0.001 to 2147483"),
        ("REDIS_URL", "rdis://127.0.0.1:6379/0", "it must be a redis://, rediss:// or unix://"),
        ("BFF_LOG_LEVEL", "verbose", "it must be one of CRITICAL, FATAL, ERROR, WARN, WARNING"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_its_variable(tmp_path, var, raw, why):
    env = clean_env(**{var: raw})
    done = bff(["users", "create", "jo"], env, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"Error: {var}={raw!r} cannot be used: {why}"), done.stderr


@pytest.mark.parametrize(
    "env,said",
    [
        ({"BFF_LOG_FORMAT": "jsn"}, "BFF_LOG_FORMAT='jsn' cannot be used: it must be one of text"),
        ({"BFF_DEFAULT_PROVIDER": "flux"}, "BFF_DEFAULT_PROVIDER='flux' is not a model: flux-pro,"),
        ({"BFF_RATE_LIMIT_FLUX": "5/60"}, "BFF_RATE_LIMIT_FLUX names no rate-limited model: one"),
        ({"BFF_REPLICATE_WEBHOOKS": "yes"}, "BFF_REPLICATE_WEBHOOKS='yes' cannot be used: it must"),
    ],
)
def test_a_setting_naming_nothing_there_is_is_refused(env, said):
    """A typo would have been ignored: logs in text, jobs routed elsewhere."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(said), refused.value


def test_a_database_url_that_is_no_url_is_one_sentence(tmp_path):
    env = clean_env(DATABASE_URL="nonsense")
    done = bff(["users", "create", "ida"], env, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("Error: DATABASE_URL is not a database URL")


def clean_env(**changes: str) -> dict[str, str]:
    """This environment without the project's variables (``CLEAN``), plus ``changes``."""
    return {**{k: v for k, v in os.environ.items() if k not in CLEAN}, **changes}


def bff(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BFF, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_db_upgrade_on_a_fresh_sqlite_database_then_create_a_user(tmp_path):
    """The real console script, configured only by the environment."""
    db = tmp_path / "fresh" / "bff.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    env = clean_env(DATABASE_URL=url, BFF_VAR_DIR=str(tmp_path / "var"))
    done = bff(["db", "upgrade"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    head = ", ".join(sorted(code_revisions()[0]))
    assert done.stdout == f"database migrated from none (empty) to {head}: the code's head\n"
    assert "alembic" not in done.stderr  # its plugins' INFO lines are not ours to print
    again = bff(["db", "upgrade"], env, tmp_path)  # idempotent
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"database already at {head}: the code's head\n"

    insp = inspect(create_engine(url))
    tables = """users api_keys generations generation_assets generation_feedback
    generation_stages providers personas alembic_version""".split()
    assert set(tables) <= set(insp.get_table_names()), insp.get_table_names()
    assert {"generation_summary", "user_generation_stats"} <= set(insp.get_view_names())
    cols = {c["name"] for c in insp.get_columns("generation_summary")}
    assert {"asset_count", "duration_seconds"} <= cols

    made = bff(["users", "create", "frank"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    assert KEY.fullmatch(made.stdout.strip().splitlines()[-1]), made.stdout


def test_db_upgrade_leaves_a_database_a_newer_release_migrated(runner, app):
    """Rolling back the code after a release migrated: its ``release`` (and
    compose's ``migrate``, which every service waits for) runs ``bff db
    upgrade`` on a revision this code has no script of. It was Alembic's
    traceback and exit 1; /health already takes such a schema for fine."""
    from sqlalchemy import text

    head = ", ".join(sorted(code_revisions()[0]))
    with app.extensions["bff"].db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.output == f"database at 9999, ahead of this code's head {head}: left as it is\n"
    with app.extensions["bff"].db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999"


def test_the_embedded_broker_url_names_a_host(app):
    """kombu warns "No hostname was supplied" on every connection otherwise."""
    from kombu import Connection

    from app.platform.config import Settings

    url = Settings.from_env({"BFF_VAR_DIR": "var"}).broker_url
    assert url.startswith("filesystem://") and Connection(url).hostname


@pytest.mark.parametrize(
    ("env", "backend", "endpoint", "refused"),
    [
        ({}, "local", None, None),
        ({"R2_BUCKET_NAME": "b", "R2_CDN_URL": "https://cdn"}, "s3", None, None),
        (
            {"R2_ACCOUNT_ID": "acc", "R2_BUCKET_NAME": "b", "R2_CDN_URL": "https://cdn"},
            "s3",
            "https://acc.r2.cloudflarestorage.com",
            None,
        ),
        ({"R2_ACCESS_KEY_ID": "k"}, None, None, "R2_ACCESS_KEY_ID set but R2_BUCKET_NAME is not"),
        ({"R2_BUCKET_NAME": "b"}, None, None, "needs R2_CDN_URL"),
        ({"STORAGE_BACKEND": "local", "R2_ACCESS_KEY_ID": "k"}, "local", None, None),
    ],
)
def test_storage_follows_the_r2_variables(env, backend, endpoint, refused):
    """The seed's .env sets only R2_*: the bucket is used, or one sentence says why not."""
    from app.platform.config import ConfigError, Settings

    if refused:
        with pytest.raises(ConfigError, match=refused):
            Settings.from_env(env)
        return
    settings = Settings.from_env(env)
    assert (settings.storage_backend, settings.r2_endpoint_url) == (backend, endpoint)


# ------------------------------------------------- migrations match the models


def _differences(url: str) -> list:
    upgrade_database(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_every_migration_goes_down_and_up_again_on_sqlite(tmp_path):
    """Up from base matches the models, after every migration went down
    (SQLite copies a table to alter it in batch mode, which its views forbid)."""
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "base")
    assert _differences(url) == []


def test_postgres_schema_matches_the_models(service_env):
    assert _differences(service_env["DATABASE_URL"]) == []


def test_migrations_run_without_a_statement_timeout(service_env, monkeypatch):
    """An index built on a big table may take longer than an API request may;
    a lock is waited for 10 s at most, not to stall the queries queued behind."""
    seen = []

    def on_connect(dbapi_conn, _record) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            statement = cur.fetchone()[0]
            cur.execute("SHOW lock_timeout")
            seen.append((statement, cur.fetchone()[0]))

    event.listen(Engine, "connect", on_connect)
    try:
        upgrade_database(service_env["DATABASE_URL"])
    finally:
        event.remove(Engine, "connect", on_connect)
    assert seen and set(seen) == {("0", "10s")}


def test_no_index_duplicates_a_unique_constraint_on_generation_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade_database(url)
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        for table in ("generation_stages", "generation_assets"):
            names = {ix["name"] for ix in insp.get_indexes(table)}
            assert f"ix_{table}_generation_id" not in names, table
    finally:
        engine.dispose()


@pytest.mark.usefixtures("service_env")
def test_a_database_the_server_does_not_have_is_named_as_such(tmp_path):
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/bff_no_such_database"
    env = clean_env(DATABASE_URL=url)
    done = bff(["db", "upgrade"], env, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: the database {url} does not exist: create it (createdb), then 'bff db upgrade'"
    ]


@pytest.mark.usefixtures("service_env")
def test_a_role_the_server_does_not_have_is_not_called_a_missing_migration(tmp_path):
    url = "postgresql+psycopg://bff_no_such_role:***@127.0.0.1:5432/postgres"
    env = clean_env(DATABASE_URL=url.replace("***", "pw"))
    done = bff(["users", "list"], env, tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot use the database {url}: ")
    assert 'role "bff_no_such_role" does not exist' in line
    assert "bff db upgrade" not in line


@pytest.mark.usefixtures("service_env")
def test_a_password_in_the_database_urls_query_is_not_printed(tmp_path):
    """psycopg takes ?password=…; SQLAlchemy's hide_password masks only user:pw@."""
    url = "postgresql+psycopg://bff_no_such_role@127.0.0.1:5432/postgres?password=hunter2"
    env = clean_env(DATABASE_URL=url)
    done = bff(["users", "list"], env, tmp_path)
    assert done.returncode == 1
    assert "?password=***: " in done.stderr and "hunter2" not in done.stderr


@pytest.mark.parametrize("level", ["warn", "FATAL", "notset", "debug"])
def test_every_level_name_logging_knows_is_a_log_level(level):
    assert Settings.from_env({"BFF_LOG_LEVEL": level}).log_level == level.upper()


def test_a_database_that_vanishes_mid_query_is_noticed_within_a_minute(service_env):
    """Keepalives probe only an idle link; a query sent to a server that
    vanished waits on TCP's retransmissions unless the connection says
    how long sent data may go unacknowledged."""
    from app.platform.db import Database

    db = Database(service_env["DATABASE_URL"])
    try:
        with db.engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()
    finally:
        db.engine.dispose()
    assert params["tcp_user_timeout"] == "60000" and params["keepalives_idle"] == "30"
