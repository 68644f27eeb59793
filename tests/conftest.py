"""Fixtures. Unit and API tests: an app on a throw-away SQLite file with an
in-memory broker (nothing consumes it). Integration tests: the Procfile's
real processes on PostgreSQL, Redis and moto's S3 server, started once per
session (``stack``)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import create_app
from app.api.auth import create_user
from app.cli import upgrade_database
from tests.support import procs as P
from tests.support.buckets import public_bucket
from tests.support.embedded import SERVICE_VARS, Embedded, embedded_system
from tests.support.services import (
    free_port,
    own_redis_db,
    postgres_ok,
    redis_ok,
    scratch_postgres_db,
    unavailable,
)

# Variables from the developer's shell must not leak into tests.
CLEAN = {name: "" for name in SERVICE_VARS}


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, str]]:
    """What the maintenance dispatcher would have sent: (generation id, stage)."""
    from app.pipeline import maintenance

    calls: list[tuple[str, str]] = []

    def fake_dispatch(celery_app, generation_id, from_stage="analyze", background=False, stages=()):
        calls.append((generation_id, from_stage))
        return True

    monkeypatch.setattr(maintenance, "dispatch", fake_dispatch)
    return calls


@pytest.fixture(scope="session")
def embedded(tmp_path_factory) -> Iterator[Embedded]:
    """`bff dev` (the embedded default), started once for the session."""
    with embedded_system(tmp_path_factory.mktemp("embedded")) as system:
        yield system


@pytest.fixture(autouse=True)
def _llm_asked_afresh() -> Iterator[None]:
    """An LLM outage one test provoked must not pause the LLM for the next."""
    yield
    from app.pipeline import llm

    llm.forget_outages()


@pytest.fixture(autouse=True)
def _sigterm_handler_kept() -> Iterator[None]:
    """A SIGTERM handler a test installs (gunicorn.conf.py's
    post_worker_init, ``bff dev``) must not outlive it: for the rest of the
    session a SIGTERM would run it (end every event stream, or not stop)."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    if signal.getsignal(signal.SIGTERM) != before:
        signal.signal(signal.SIGTERM, before)
        pytest.fail("the test left a SIGTERM handler of its own installed")


@pytest.fixture(autouse=True)
def _embedded_still_running(request) -> None:
    """A test of the shared `bff dev` whose processes stopped earlier in the
    session fails saying so, with its last output (otherwise each such test
    says only that the API cannot be reached)."""
    if "embedded" in request.fixturenames:
        system = request.getfixturevalue("embedded")
        last = "".join(system.output[-30:])
        assert system.proc.poll() is None, f"the session's bff dev has stopped:\n{last}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "bff.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def app_config(tmp_path, sqlite_template) -> dict[str, str]:
    db = tmp_path / "bff.db"
    shutil.copy(sqlite_template, db)
    return {
        **CLEAN,
        "DATABASE_URL": f"sqlite:///{db}",
        "BFF_VAR_DIR": str(tmp_path / "var"),
        "CELERY_BROKER_URL": "memory://",
        "STORAGE_BACKEND": "local",
        "BFF_MEDIA_ROOT": str(tmp_path / "media"),
        "BFF_PUBLIC_URL": "http://testserver",
    }


@pytest.fixture
def app(app_config):
    return create_app(app_config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def generator_tasks(app, monkeypatch) -> list[dict]:
    """The tasks the API sends for the ``generator`` to run (a stopped job's
    Replicate cancels), run at once as a worker would, their arguments
    through JSON as the broker carries them. Returns the arguments run."""
    import json

    import workers.tasks  # noqa: F401  (registers the tasks)
    from app.pipeline import stops

    celery, ran = app.extensions["bff"].celery, []
    real = celery.send_task

    def send_task(name, args=(), kwargs=None, **options):
        if name != stops.TASK:
            return real(name, args, kwargs, **options)
        ran.append(json.loads(json.dumps(args)))
        with app.app_context():
            celery.tasks[name].apply(args=ran[-1], throw=True)

    monkeypatch.setattr(celery, "send_task", send_task)
    return ran


class CliRunner:
    """``bff`` in-process, on the test's app."""

    def __init__(self, app) -> None:
        from click.testing import CliRunner as Click

        self.app, self.click = app, Click()

    def invoke(self, args: list[str]):
        from app.cli import cli

        return self.click.invoke(cli, args, obj=self.app)


@pytest.fixture
def runner(app):
    return CliRunner(app)


@pytest.fixture(scope="session")
def api(tmp_path_factory):
    """The Procfile's ``web`` (tests/support/live.py) the ``bff`` client tests
    talk to, its event streams sending keepalives every 0.3 s."""
    from tests.support.live import live_api  # it imports this module

    with live_api(tmp_path_factory.mktemp("cli-live"), BFF_SSE_HEARTBEAT="0.3") as live:
        yield live


@dataclass
class User:
    id: int
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_user(app, name: str) -> User:
    with app.extensions["bff"].db.session() as session:
        user, key = create_user(session, name)
        return User(user.id, key)


@pytest.fixture
def user(app) -> User:
    return make_user(app, "alice")


@pytest.fixture
def other_user(app) -> User:
    return make_user(app, "mallory")


# ---------------------------------------------------------------- real services


@pytest.fixture
def pg_app(service_env, tmp_path):
    """The app in-process on the session's PostgreSQL database (local-disk
    storage, an in-memory broker nothing consumes)."""
    app = create_app(
        {
            **service_env,
            "CELERY_BROKER_URL": "memory://",
            "STORAGE_BACKEND": "local",
            "BFF_MEDIA_ROOT": str(tmp_path / "media"),
            "BFF_SUBMIT_RATE_LIMIT": "0",
        }
    )
    yield app
    app.extensions["bff"].db.engine.dispose()


@pytest.fixture
def pg_user(pg_app) -> User:
    return make_user(pg_app, f"pg-{secrets.token_hex(4)}")


@pytest.fixture
def at_once(pg_app):
    """``request(client)`` from ``n`` threads released together, on PostgreSQL,
    where requests really run side by side."""
    return lambda n, request: P.together(n, lambda _: request(pg_app.test_client()))


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request) -> tuple:
    """(app, user): on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("app"), request.getfixturevalue("user")
    return request.getfixturevalue("pg_app"), request.getfixturevalue("pg_user")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Our own leased, empty Redis db number: test sessions side by side on one
    server never share one (channels that must stay apart carry the number)."""
    if not redis_ok():
        unavailable("Redis on 127.0.0.1:6379")
    with own_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def service_env(tmp_path_factory, s3_server) -> Iterator[dict[str, str]]:
    """Environment for the real system: a scratch Postgres database, our own
    Redis db number, a bucket on moto's S3 server."""
    if not postgres_ok():
        unavailable("PostgreSQL on 127.0.0.1:5432")
    if not redis_ok():
        unavailable("Redis on 127.0.0.1:6379")
    bucket = "bff-test"
    public_bucket(s3_server, bucket)
    with own_redis_db() as redis_url, scratch_postgres_db() as url:
        upgrade_database(url)
        yield {
            **{k: v for k, v in os.environ.items() if k not in CLEAN},
            **CLEAN,
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "STORAGE_BACKEND": "s3",
            "R2_ENDPOINT_URL": s3_server,
            "R2_ACCESS_KEY_ID": "test",
            "R2_SECRET_ACCESS_KEY": "test",
            "R2_BUCKET_NAME": bucket,
            "R2_CDN_URL": f"{s3_server}/{bucket}",
            "R2_REGION": "us-east-1",
            "BFF_VAR_DIR": str(tmp_path_factory.mktemp("var")),
        }


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    procs: dict[str, P.Process]
    app: object

    def user(self, name: str) -> User:
        return make_user(self.app, name)


@pytest.fixture(scope="session")
def stack(service_env, tmp_path_factory) -> Iterator[Stack]:
    """The Procfile's ``web``, ``worker`` and ``generator`` processes, exactly as
    an operator runs them, on PostgreSQL + Redis + S3."""
    port = free_port()
    env = {
        **service_env,
        **P.procfile_env(port),
        # Webhook tests deliver to a receiver on 127.0.0.1, retrying quickly.
        "BFF_ALLOW_HTTP_WEBHOOKS": "1",
        "BFF_WEBHOOK_RETRY_BASE": "0.5",
    }
    with P.running(env, tmp_path_factory.mktemp("logs")) as (base, procs):
        yield Stack(base, env, procs, create_app(dict(env)))


# ---------------------------------------------------------------- fake OpenAI chat


@pytest.fixture(scope="session")
def _openai_chat_server():
    from tests.fakes.openai_chat import FakeOpenAIChat

    with FakeOpenAIChat() as fake:
        yield fake


@pytest.fixture
def openai_chat(_openai_chat_server):
    """The fake OpenAI chat-completions server, emptied for this test."""
    _openai_chat_server.reset()
    yield _openai_chat_server
    _openai_chat_server.reset()


REPLICATE_TOKEN = "r8_unit_test_token"


@pytest.fixture(scope="session")
def replicate_server():
    """The fake Replicate server (Replicate's wire format), one per session."""
    from tests.fakes.replicate import FakeReplicate

    with FakeReplicate(token=REPLICATE_TOKEN) as fake:
        yield fake


@pytest.fixture
def replicate_fake(replicate_server):
    """The fake, reset, its predictions starting at once and done in 0.3 s."""
    replicate_server.reset()
    replicate_server.latency, replicate_server.starting_s = 0.3, 0.05
    return replicate_server


@pytest.fixture
def fake(replicate_fake):
    """The fake Replicate, as the tests that drive it call it."""
    return replicate_fake


def on_replicate(app_config: dict[str, str], fake) -> dict[str, str]:
    """``app_config`` on the fake Replicate, its polls quick (a module's
    ``app_config`` fixture returns this to run its app's paid stages there)."""
    return {
        **app_config,
        "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REPLICATE_BASE_URL": fake.url,
        "BFF_PROVIDER_POLL_SECONDS": "0.05",
    }
