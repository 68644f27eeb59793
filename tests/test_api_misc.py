"""/health, /api/stats, /cdn/ and /api/providers."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from PIL import Image
from sqlalchemy import text as sa_text

from app import create_app
from app.domain import spend
from app.domain.models import Generation
from app.pipeline.context import StageFailed
from app.pipeline.runner import STAGE_FUNCS
from app.providers.catalog import CATALOGUE
from tests.support.pipeline import load, run_all, services, submit_prompt
from tests.support.services import free_port

# ------------------------------------------------------------------ health


def test_health_ok(client):
    resp = client.get("/health")  # no key needed
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    assert body["storageBackend"] == "local"
    assert body["providers"]["local"] == {
        "configured": True,
        "verified": None,
        "detail": "needs no key",
    }
    assert body["providers"]["google-imagen"]["detail"] == "REPLICATE_API_TOKEN not configured"


def test_health_503_when_storage_is_unwritable(app_config, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the media folder should be")
    app = create_app({**app_config, "BFF_MEDIA_ROOT": str(blocker / "media")})
    resp = app.test_client().get("/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["storage"].startswith("error")
    assert body["checks"]["database"] == "ok"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-bff-dir/sub/bff.db",
        "postgresql+psycopg://postgres@127.0.0.1:{port}/bff?connect_timeout=2",
    ],
    ids=["sqlite-missing-dir", "postgres-closed-port"],
)
def test_health_503_when_the_database_is_unreachable(app_config, url):
    app = create_app({**app_config, "DATABASE_URL": url.format(port=free_port())})
    resp = app.test_client().get("/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["checks"]["database"].startswith("error")
    assert body["checks"]["storage"] == "ok"
    # Requests that need the database answer 503 in JSON too, not a 500.
    resp = app.test_client().get("/api/generate", headers={"Authorization": "Bearer bff_x_y"})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "service_unavailable"
    assert resp.headers["Retry-After"]


def test_503_when_every_pooled_connection_stays_busy(app_config, monkeypatch):
    """A pool with no connection free in time is a busy database (503, as an
    outage), not a crash (500)."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from app.platform import db

    monkeypatch.setattr(db, "POOL_TIMEOUT", 0.1)
    app = create_app(app_config)
    engine, held = app.extensions["bff"].db.engine, []
    try:
        while len(held) < 50:  # every connection the pool will give
            held.append(engine.connect())
    except PoolTimeout:
        pass
    try:
        headers = {"Authorization": "Bearer bff_x_y"}  # its lookup needs a connection
        resp = app.test_client().get("/api/generate", headers=headers)
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "service_unavailable"
    assert resp.headers["Retry-After"]


def _head() -> str:
    from alembic.script import ScriptDirectory

    from app.platform.schema import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_health_503_on_a_database_nobody_migrated(app_config, tmp_path):
    """SELECT 1 works on an empty database while every API call fails on a
    missing table: /health says so, and what to do."""
    app = create_app({**app_config, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    resp = app.test_client().get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["database"] == (
        f"error: database schema at none (never migrated), code needs {_head()}: run bff db upgrade"
    )


def test_health_503_on_a_database_behind_the_code(app_config, tmp_path):
    from alembic import command

    from app.cli import upgrade_database
    from app.platform.schema import alembic_config

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "-1")
    app = create_app({**app_config, "DATABASE_URL": url})
    resp = app.test_client().get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["database"].startswith("error: database schema at 00")
    upgrade_database(url)
    assert app.test_client().get("/health").status_code == 200


def test_health_ok_on_a_database_ahead_of_the_code(app):
    """A release migrated for the next version while this one still serves (a
    rolling deploy): not a reason to take this process out of rotation."""
    with services(app).db.session() as session:
        session.execute(sa_text("UPDATE alembic_version SET version_num = '9999_next'"))
    resp = app.test_client().get("/health")
    assert resp.status_code == 200, resp.get_json()


def test_health_checks_a_redis_apart_from_the_broker(app_config, redis_url):
    """REDIS_URL beside another broker (CELERY_BROKER_URL): the broker's check
    does not reach it, yet the rate limits need it (generation stalls)."""
    app = create_app({**app_config, "REDIS_URL": redis_url})  # the broker: memory://
    resp = app.test_client().get("/health")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
        "redis": "ok",
    }
    down = create_app({**app_config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    resp = down.test_client().get("/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"] == "error: ConnectionError"
    assert body["checks"]["broker"] == "ok"


def test_health_checks_redis_once_when_it_is_the_broker(app_config):
    """Without CELERY_BROKER_URL, REDIS_URL is the broker: ``broker`` is its check."""
    config = {k: v for k, v in app_config.items() if k != "CELERY_BROKER_URL"}
    app = create_app({**config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    resp = app.test_client().get("/health")
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert set(checks) == {"database", "broker", "storage"}
    assert checks["broker"].startswith("error")


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:{port}", "redis://127.0.0.1:{port}/0/"])
def test_health_checks_redis_once_when_the_broker_names_it_otherwise(app_config, broker):
    """The broker's URL written without db 0, or with a trailing slash: the
    same Redis. Before, it was checked twice, a silent one answering after both."""
    port = free_port()
    app = create_app(
        {
            **app_config,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "CELERY_BROKER_URL": broker.format(port=port),
        }
    )
    assert set(app.test_client().get("/health").get_json()["checks"]) == {
        "database",
        "broker",
        "storage",
    }


def test_a_failing_check_is_logged_whole_and_not_at_every_poll(app_config, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the media folder should be")
    app = create_app({**app_config, "BFF_MEDIA_ROOT": str(blocker / "media")})
    with caplog.at_level(logging.WARNING, logger="app.api.health"):
        for _ in range(5):  # a load balancer polling
            body = app.test_client().get("/health").get_json()
    # The anonymous caller learns the class only; the log has the reason.
    assert body["checks"]["storage"] == "error: NotADirectoryError"
    lines = [r.getMessage() for r in caplog.records if r.name == "app.api.health"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("health: storage failing: NotADirectoryError: [Errno 20]")
    assert str(blocker) in lines[0]


def test_failure_log_says_changes_and_reminds_once_a_minute(caplog):
    from app.api.health import FailureLog

    now = [0.0]
    failures = FailureLog(every=60, gap=10, clock=lambda: now[0])
    steps = [  # (seconds later, the check's reason or None for ok)
        (0, None),  # ok from the start: nothing to say
        (1, "refused"),  # said
        (1, "refused"),
        (30, "refused"),
        (30, "refused"),  # a minute since it was said: said again
        (1, "timed out"),  # within the gap: held back
        (10, "timed out"),  # said
        (11, None),  # said: ok again
        (1, "refused"),  # flapping: held back...
        (1, None),
        (30, None),  # ...and quiet: it is ok, as last said
    ]
    with caplog.at_level(logging.INFO, logger="app.api.health"):
        for later, why in steps:
            now[0] += later
            failures.note("database", why)
    assert [r.getMessage() for r in caplog.records] == [
        "health: database failing: refused",
        "health: database failing: refused",
        "health: database failing: timed out",
        "health: database ok again",
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3 + ["INFO"]


def test_failure_reasons_name_no_password():
    from app.api.health import reason

    exc = OSError("could not reach postgresql+psycopg://bff:s3cr%40t@db:5432/bff (refused)")
    assert (
        reason(exc) == "OSError: could not reach postgresql+psycopg://bff:***@db:5432/bff (refused)"
    )
    exc = OSError('Could not connect to the endpoint URL: "https://AKIA:wJalr/K7@r2.example/b"')
    assert "wJalr" not in reason(exc)
    cut = OSError("x" * 985 + " r://u:hunter2hunter2@redis:6379/0")  # cut at 1000 characters
    assert "hunter" not in reason(cut)
    exc = OSError("Error connecting to unix:///run/r.sock?db=0&password=hunter2: refused")
    assert "unix:///run/r.sock?db=0&password=***" in reason(exc) and "hunter" not in reason(exc)


# ------------------------------------------------------------------- stats


def set_cost(app, gen_id: str, cost: str) -> None:
    with services(app).db.Session() as session:  # pay() commits, as generate's
        gen = session.get(Generation, gen_id)
        spend.pay(session, gen, Decimal(cost), gen.provider, "generate")


def test_stats(app, client, user, other_user, monkeypatch):
    assert client.get("/api/stats").status_code == 401
    empty = client.get("/api/stats", headers=user.headers).get_json()
    assert empty["counts"]["total"] == 0 and empty["successRate"] is None
    assert empty["costByDay"] == []

    done = [submit_prompt(client, user.headers, f"dress {i}") for i in range(3)]
    for gen_id in done:
        run_all(app, gen_id)
    set_cost(app, done[0], "0.04")
    set_cost(app, done[1], "0.02")
    with monkeypatch.context() as m:
        m.setitem(STAGE_FUNCS, "generate", lambda ctx: (_ for _ in ()).throw(StageFailed("no")))
        broken = submit_prompt(client, user.headers)
        run_all(app, broken)
    canceled = submit_prompt(client, user.headers)
    client.post(f"/api/generate/{canceled}/cancel", headers=user.headers)
    submit_prompt(client, user.headers)  # still pending
    theirs = submit_prompt(client, other_user.headers)
    run_all(app, theirs)
    set_cost(app, theirs, "1.00")

    stats = client.get("/api/stats", headers=user.headers).get_json()
    assert stats["counts"] == {
        "total": 6,
        "completed": 3,
        "failed": 1,
        "canceled": 1,
        "inProgress": 1,  # camelCase, as everywhere (in_progress until 2026-12-07)
    }
    assert stats["successRate"] == 0.75
    assert stats["assets"] == 3
    assert stats["totalCost"] == pytest.approx(0.06)
    assert stats["avgDurationSeconds"] is not None and stats["avgDurationSeconds"] >= 0
    assert stats["stageDurationsMs"]["generate"]["count"] == 3
    assert stats["stageDurationsMs"]["enhance"]["count"] == 4  # the failed one got past it
    [table] = stats["costByPriceTable"]  # which prices the costs were computed with
    assert table["table"].startswith("builtin ") and table["cost"] == pytest.approx(0.06)
    today = datetime.now(UTC).date().isoformat()
    [day] = stats["costByDay"]
    assert day["day"].startswith(today)
    assert day["byProvider"] == {"local": pytest.approx(0.06)}
    assert day["total"] == pytest.approx(0.06)

    other = client.get("/api/stats", headers=other_user.headers).get_json()
    assert other["counts"]["total"] == 1 and other["totalCost"] == pytest.approx(1.0)


# --------------------------------------------------------------------- cdn


def test_cdn_serves_stored_images(app, client, user):
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    asset = load(app, gen_id)["assets"][0]
    path = asset["url"].removeprefix("http://testserver")
    assert path.startswith("/cdn/users/")
    resp = client.get(path)  # public, like a CDN: no key
    assert resp.status_code == 200
    assert resp.mimetype == "image/png"
    assert len(resp.data) == asset["fileSize"]
    assert Image.open(io.BytesIO(resp.data)).size == (asset["width"], asset["height"])
    assert "max-age" in resp.headers["Cache-Control"]


def test_every_answer_forbids_sniffing_and_framing(app, client, user):
    """An upload served from /cdn/ is never read as HTML; the page, which keeps
    the API key, is never framed by another site."""
    gen_id = submit_prompt(client, user.headers)
    run_all(app, gen_id)
    image = load(app, gen_id)["assets"][0]["url"].removeprefix("http://testserver")
    for path, headers in (
        ("/", {}),
        (image, {}),
        ("/api/generate", {}),
        (f"/api/generate/{gen_id}", user.headers),
    ):
        resp = client.get(path, headers=headers)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path


def test_cdn_missing_is_404_json(client):
    resp = client.get("/cdn/users/1/generations/gen_nope/0.png")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/cdn/../bff.db",
        "/cdn/..%2Fbff.db",
        "/cdn/users/../../bff.db",
        "/cdn/%2e%2e/bff.db",
        "/cdn//etc/passwd",
        "/cdn/%2Fetc%2Fpasswd",
    ],
)
def test_cdn_refuses_path_traversal(app, client, path):
    db_file = services(app).settings.media_root.parent / "bff.db"
    assert db_file.exists()  # the secret next door
    resp = client.get(path, follow_redirects=True)  # "//" is merged by a redirect first
    assert resp.status_code in (400, 404), path
    assert resp.get_json()["error"]
    assert b"SQLite" not in resp.data and b"root:" not in resp.data


def test_providers_say_what_each_model_can_do_and_costs(client, user):
    assert client.get("/api/providers").status_code == 401
    body = client.get("/api/providers", headers=user.headers).get_json()
    models = {p["id"]: p for p in body["items"]}
    assert set(models) == set(CATALOGUE)  # every catalogue entry, none besides
    assert models["local"]["available"] and models["local"]["prices"]["hd"]["16:9"] == 0
    imagen = models["google-imagen"]
    assert (
        not imagen["available"]
        and imagen["unavailableReason"] == "REPLICATE_API_TOKEN not configured"
    )
    assert imagen["prices"]["standard"]["1:1"] == imagen["prices"]["hd"]["1:1"] == 0.06
    assert imagen["capabilities"]["safetyLevels"][-1] == "block_only_high"
    dalle = models["openai-dalle3"]
    assert dalle["prices"]["hd"]["16:9"] == 0.12 and dalle["capabilities"]["styles"]
    assert body["priceTable"].startswith("builtin ")
    flux, banana = models["flux-pro"], models["nano-banana"]
    assert flux["model"] == "black-forest-labs/flux-1.1-pro" and flux["api"] == "replicate-official"
    assert (
        flux["prices"]["standard"]["16:9"] == 0.04 and banana["prices"]["standard"]["1:1"] == 0.039
    )
    assert flux["source"].startswith("https://replicate.com/black-forest-labs/flux-1.1-pro")
    assert banana["capabilities"]["aspectRatios"] == ["1:1"]
    refs = {pid for pid, m in models.items() if m["capabilities"]["referenceImages"]}
    assert refs == {"flux-pro", "nano-banana", "openai-gpt-image", "local"}
