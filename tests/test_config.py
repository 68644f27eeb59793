"""Every numeric and URL setting is range-checked at start (``config.ALLOWED``):
a value out of range is one line naming the variable, not a service that
starts and then fails every request. (The bff command's own refusal, as a
process, is in test_cli.py.)"""

from __future__ import annotations

from dataclasses import fields

import pytest

from app import create_app
from app.platform.checks import BROKER
from app.platform.config import ConfigError, Settings


@pytest.mark.parametrize(
    "var,raw,why",
    [
        # Each started, then broke: PostgreSQL refused every connection, every
        # upload was 413, every SSE stream 503, asset URLs "not a url/cdn/…".
        ("BFF_DB_STATEMENT_TIMEOUT", "-1", "from 0.001 to 2147483"),
        ("BFF_DB_STATEMENT_TIMEOUT", "0.0001", "from 0.001"),  # 0 ms: PostgreSQL's "no limit"
        ("BFF_DB_STATEMENT_TIMEOUT", "2147484", "from 0.001 to 2147483"),  # past int ms
        ("BFF_MAX_UPLOAD_BYTES", "-1", "at least 1"),
        ("BFF_MAX_IMAGE_PIXELS", "0", "at least 1"),
        ("BFF_SSE_MAX_STREAMS", "-3", "at least 1"),
        ("BFF_PUBLIC_URL", "not a url", "an absolute http:// or https:// URL"),
        ("BFF_PUBLIC_URL", "ftp://bff.example", "an absolute http:// or https:// URL"),
        ("BFF_PUBLIC_URL", "https://bff.example/?x=1", "an absolute http:// or https:// URL"),
        ("BFF_PUBLIC_URL", "https://bff.example:99999", "an absolute http:// or https:// URL"),
        ("R2_CDN_URL", "cdn.example.com", "an absolute http:// or https:// URL"),
        ("R2_ENDPOINT_URL", "s3.example.com", "an absolute http:// or https:// URL"),
        ("REPLICATE_BASE_URL", "localhost:9000", "an absolute http:// or https:// URL"),
        ("OPENAI_BASE_URL", "/v1", "an absolute http:// or https:// URL"),
        ("BFF_BROKER_VISIBILITY_TIMEOUT", "-1", "at least 1"),
        ("BFF_SUBMIT_RATE_LIMIT", "-5/60", "N/SECONDS with N at least 0 (0: off)"),
        ("BFF_SUBMIT_RATE_LIMIT", "5/0", "N/SECONDS with N at least 0 (0: off)"),
        ("BFF_WEBHOOK_MAX_AGE", "-1", "more than 0"),
        ("BFF_WEBHOOK_RETRY_BASE", "0", "more than 0"),
        ("BFF_CIRCUIT_FAILURE_RATE", "7", "from 0 to 1"),
        ("BFF_CIRCUIT_FAILURE_RATE", "-0.1", "from 0 to 1"),
        ("BFF_CIRCUIT_WINDOW_S", "0", "at least 1"),
        ("BFF_CIRCUIT_MIN_SAMPLES", "-1", "at least 0"),
        ("BFF_PROVIDER_POLL_SECONDS", "-1", "more than 0"),
        ("BFF_LLM_TIMEOUT", "-3", "more than 0"),
        ("BFF_LOCAL_RENDER_SCALE", "0", "more than 0"),
        ("BFF_SSE_POLL", "0", "more than 0"),
        ("BFF_STAGE_MAX_ATTEMPTS", "0", "at least 1"),
        ("BFF_GENERATION_TIMEOUT", "inf", "more than 0"),  # timedelta(seconds=inf) overflows
        ("BFF_STALL_TIMEOUT", "nan", "more than 0"),
        ("PORT", "0", "from 1 to 65535"),
        ("PORT", "70000", "from 1 to 65535"),
        ("REDIS_URL", "http://redis.example", "a redis://, rediss:// or unix:// URL"),
    ],
)
def test_a_setting_out_of_range_is_refused_naming_it(var, raw, why):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({var: raw})
    assert str(refused.value).startswith(f"{var}={raw!r} cannot be used: it must be {why}")


@pytest.mark.parametrize(
    "env,attr,value",
    [
        ({"BFF_SUBMIT_RATE_LIMIT": "0"}, "submit_rate_limit", (0, 60.0)),  # 0: off
        ({"BFF_CIRCUIT_FAILURE_RATE": "0"}, "circuit_failure_rate", 0.0),
        ({"BFF_CIRCUIT_FAILURE_RATE": "1"}, "circuit_failure_rate", 1.0),  # never opens
        ({"BFF_CIRCUIT_MIN_SAMPLES": "0"}, "circuit_min_samples", 0),
        ({"BFF_DB_STATEMENT_TIMEOUT": "0.001"}, "db_statement_timeout", 0.001),
        ({"BFF_WEBHOOK_MAX_AGE": "0.2"}, "webhook_max_age", 0.2),
        ({"PORT": "65535"}, "port", 65535),
        ({"BFF_PUBLIC_URL": "https://bff.example/"}, "public_url", "https://bff.example"),
        ({"BFF_PUBLIC_URL": "http://[::1]:3001"}, "public_url", "http://[::1]:3001"),
        ({"R2_CDN_URL": "https://cdn.example/bucket/"}, "r2_cdn_url", "https://cdn.example/bucket"),
    ],
)
def test_the_edges_of_a_range_are_accepted(env, attr, value):
    assert getattr(Settings.from_env(env), attr) == value


def test_every_numeric_setting_has_a_range():
    """A setting added without a row would start out of range again."""
    from app.platform.config import ALLOWED

    numeric = {
        f.metadata["env"]
        for f in fields(Settings)
        if f.metadata.get("env") and any(t in str(f.type) for t in ("int", "float"))
    }
    assert numeric and numeric - {"BFF_ALLOW_HTTP_WEBHOOKS"} <= set(ALLOWED)
    assert {"PORT", "BFF_PUBLIC_URL", "REDIS_URL", "CELERY_BROKER_URL"} <= set(ALLOWED)


# --------------------------------------------------------------- the broker


@pytest.mark.parametrize(
    "env,var",
    [
        # The worker and beat died on "No such transport: rdis"; web answered
        # 202 to submits that could never be sent.
        ({"REDIS_URL": "rdis://127.0.0.1:6379/0"}, "REDIS_URL"),
        ({"CELERY_BROKER_URL": "rdis://127.0.0.1:6379/0"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://a:6379/0;rdis://b:6379/0"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "localhost"}, "CELERY_BROKER_URL"),  # kombu would try amqp
        ({"CELERY_BROKER_URL": "os.path://x"}, "CELERY_BROKER_URL"),  # never an import path
        # redis-py takes unix://, kombu does not: without CELERY_BROKER_URL it is the broker.
        ({"REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL"),
        # A transport whose library is not installed (kombu's kafka raises NameError).
        ({"CELERY_BROKER_URL": "confluentkafka://k:9092"}, "CELERY_BROKER_URL"),
    ],
)
def test_a_broker_url_kombu_cannot_use_is_refused(env, var):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(f"{var}={env[var]!r} cannot be used: it must be ")
    if env[var].startswith("unix:"):  # fine for redis-py: the way out is a broker URL
        assert str(refused.value).endswith("(else set CELERY_BROKER_URL)")


@pytest.mark.parametrize(
    "var,raw,said",
    [
        # Every process prints the refusal at start, into its logs.
        ("REDIS_URL", "rdis://:hunter2@r:6379/0", "'rdis://:***@r:6379/0'"),
        ("REDIS_URL", "redis://:hunter2@r:port/0", "'redis://:***@r:port/0'"),
        ("CELERY_BROKER_URL", "amqpx://bff:hunter2@mq//", "'amqpx://bff:***@mq//'"),
        (
            "CELERY_BROKER_URL",
            "redis://:hunter2@a:6379/0;rdis://:hunter2@b/0",
            "'redis://:***@a:6379/0;rdis://:***@b/0'",
        ),
        ("R2_ENDPOINT_URL", "ftp://key:hunter2@r2.example", "'ftp://key:***@r2.example'"),
        # redis-py's form for a socket's password; not the broker too
        ("REDIS_URL", "unix:///run/r.sock?password=hunter2", "'unix:///run/r.sock?password=***'"),
        # an "@" in the password: redis-py and kombu take all of "hun@ter2"
        ("REDIS_URL", "redis://:hun@ter2@r:port/0", "'redis://:***@r:port/0'"),
    ],
)
def test_a_refused_url_never_shows_its_password(var, raw, said):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({var: raw})
    assert str(refused.value).startswith(f"{var}={said} cannot be used: ")
    assert "hunter2" not in str(refused.value) and "ter2" not in str(refused.value)


@pytest.mark.parametrize(
    "env",
    [
        {},  # the embedded filesystem broker
        {"CELERY_BROKER_URL": "filesystem://localhost/"},
        {"REDIS_URL": "redis://127.0.0.1:6379/0"},
        {"REDIS_URL": "rediss://redis.example:6380/0"},
        {"CELERY_BROKER_URL": "memory://"},
        {"CELERY_BROKER_URL": "amqp://guest@rabbit//"},
        {"CELERY_BROKER_URL": "sentinel://a:26379;sentinel://b:26379"},
        {"REDIS_URL": "unix:///run/redis.sock", "CELERY_BROKER_URL": "redis+socket:///run/r.sock"},
    ],
)
def test_a_broker_url_kombu_knows_is_accepted(env):
    settings = Settings.from_env(env)
    assert BROKER.test(settings.broker_url)


def test_web_refuses_a_broker_it_could_never_send_to(app_config):
    """create_app is what gunicorn's web process runs: it stops there too."""
    with pytest.raises(ConfigError, match="REDIS_URL='rdis://h:6379/0' cannot be used"):
        create_app({**app_config, "CELERY_BROKER_URL": "", "REDIS_URL": "rdis://h:6379/0"})


# ------------------------------------------------------------- the database


@pytest.mark.parametrize(
    "url,said",
    [
        # Each was a traceback in every process (gunicorn "Worker failed to
        # boot", Celery failing to import ``workers``): the driver is not installed.
        ("postgresql+psycopg2://bff:s3cret@db/bff", "DATABASE_URL names postgresql+psycopg2://"),
        ("mysql://bff:s3cret@db/bff", "DATABASE_URL names mysql://"),
        ("nonsense", "DATABASE_URL is not a database URL"),
        ("postgresql://bff:s3cret@db:port/bff", "DATABASE_URL is not a database URL"),
    ],
)
def test_a_database_url_the_code_cannot_use_is_one_line(url, said):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": url})
    assert str(refused.value).startswith(said)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    "url,used",
    [
        ("postgres://bff@db/bff", "postgresql+psycopg://bff@db/bff"),  # Heroku's
        ("postgresql://bff@db/bff", "postgresql+psycopg://bff@db/bff"),
        ("postgresql+psycopg://bff@db/bff?connect_timeout=2", None),
        ("sqlite:///var/bff.db", None),
        ("sqlite://", None),
    ],
)
def test_a_database_url_of_postgresql_or_sqlite_is_used(url, used):
    assert Settings.from_env({"DATABASE_URL": url}).database_url == (used or url)


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        # The database shared, the broker a folder of this machine's: with the
        # web and the workers on two machines every job stayed pending, /health "ok".
        ({"DATABASE_URL": "postgresql+psycopg://bff@db.example/bff"}, True),
        ({}, False),  # SQLite: the embedded default, one machine by nature
        (
            {
                "DATABASE_URL": "postgresql+psycopg://bff@db.example/bff",
                "REDIS_URL": "redis://redis.example:6379/0",
            },
            False,
        ),
    ],
)
def test_web_warns_at_start_of_a_shared_database_beside_the_embedded_broker(
    monkeypatch, caplog, tmp_path, env, warned
):
    """gunicorn's start (the Procfile's web); Celery's processes warn the same
    way as they load ``workers`` (workers/__init__.py)."""
    import runpy

    from tests.support.procs import ROOT

    for var in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BFF_VAR_DIR", str(tmp_path))
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    runpy.run_path(str(ROOT / "gunicorn.conf.py"))["on_starting"](None)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no REDIS_URL or CELERY_BROKER_URL" in m for m in said) == warned, said


PRICE_ROW = """[[price]]
provider = "local"
model = "local"
size = "*"
quality = "*"
usd = {usd}
unit = "image"
source = "mine"
checked = 2026-12-01
"""


@pytest.mark.parametrize(
    "text,why",
    [
        (None, "No such file or directory"),
        ("price = [", "Invalid"),  # TOML that does not parse
        ("x = 1\n", "it has no [[price]] rows"),
        ('[[price]]\nprovider = "local"\n', "a [[price]] row is not one of prices.toml's"),
        (PRICE_ROW.format(usd='"0.04"'), "the local row's usd is '0.04', not a number 0 or more"),
        (PRICE_ROW.format(usd="-1"), "the local row's usd is -1, not a number 0 or more"),
        (PRICE_ROW.format(usd="nan"), "the local row's usd is nan, not a number 0 or more"),
    ],
)
def test_a_price_file_that_cannot_be_read_is_one_line_at_start(tmp_path, text, why):
    """It was a traceback in every process (gunicorn's workers, each Celery
    process, the bff command), from the first request's import of prices."""
    path = tmp_path / "prices.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"BFF_PRICES_FILE": str(path)})
    assert str(refused.value).startswith(f"BFF_PRICES_FILE={str(path)!r} cannot be used: ")
    assert why in str(refused.value)


def test_a_price_file_edited_after_the_check_is_read_as_it_is_then(tmp_path):
    """gunicorn's master checks the settings; a HUP forks new workers from it,
    which read the file as edited (the check kept no table for them)."""
    from app.providers import pricing

    path = tmp_path / "prices.toml"
    path.write_text(PRICE_ROW.format(usd="0.5"))
    Settings.from_env({"BFF_PRICES_FILE": str(path)})  # the master, at start
    path.write_text(PRICE_ROW.format(usd="0.7"))
    try:
        pricing.configure(str(path))  # a worker forked after the edit
        assert pricing.price("local", "standard") == 0.7
    finally:
        pricing.configure(None)


@pytest.mark.parametrize("raw,on", [("1", True), ("Yes", True), ("off", False), ("0", False)])
def test_an_on_off_setting_takes_the_words_for_on_and_off(raw, on):
    assert Settings.from_env({"BFF_ALLOW_HTTP_WEBHOOKS": raw}).allow_http_webhooks is on


@pytest.mark.parametrize("raw", ["enabled", "2", "y"])
def test_an_on_off_setting_that_is_neither_is_refused(raw):
    """It was taken for off: plain-http webhooks an operator meant to allow
    were refused at delivery, seen only in webhook_deliveries."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"BFF_ALLOW_HTTP_WEBHOOKS": raw})
    assert str(refused.value) == (
        f"BFF_ALLOW_HTTP_WEBHOOKS={raw!r} cannot be used: "
        "it must be one of 1, true, yes, on (or 0, false, no, off)"
    )


def test_the_settings_repr_shows_no_secret():
    """A traceback or a debug line may show the settings: never a key or a
    password (before, R2's secret and the URLs' passwords were in it)."""
    secrets = {
        "DATABASE_URL": "postgresql+psycopg://bff:pg-s3cret@db/bff",
        "REDIS_URL": "redis://:redis-s3cret@r:6379/0",
        "CELERY_BROKER_URL": "amqp://bff:amqp-s3cret@mq//",
        "STORAGE_BACKEND": "s3",
        "R2_ENDPOINT_URL": "https://r2.example.com",
        "R2_ACCESS_KEY_ID": "id",
        "R2_SECRET_ACCESS_KEY": "r2-s3cret",
        "R2_BUCKET_NAME": "b",
        "R2_CDN_URL": "https://cdn.example.com",
        "REPLICATE_API_TOKEN": "r8_s3cret",
        "OPENAI_API_KEY": "sk-s3cret",
    }
    shown = repr(Settings.from_env(secrets))
    assert "s3cret" not in shown
    assert "r2.example.com" in shown  # the rest is still there to read
