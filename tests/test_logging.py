"""Logs carry the generation id and stage, from requests and from tasks; JSON
with BFF_LOG_FORMAT=json, plain text otherwise."""

from __future__ import annotations

import io
import json
import logging

import pytest
from celery.signals import task_postrun, task_prerun
from sqlalchemy.exc import DBAPIError

from app import create_app
from app.api.errors import ApiError
from app.platform import logs
from app.platform.config import Settings


def capture(fmt: str) -> io.StringIO:
    buf = io.StringIO()
    logs.configure(Settings.from_env({"BFF_LOG_FORMAT": fmt}), stream=buf)
    return buf


def test_json_lines_carry_generation_and_stage_from_a_pipeline_task():
    buf = capture("json")
    task = type("GenerateTask", (), {"name": "pipeline.generate"})()
    task_prerun.send(sender=task, task_id="t1", task=task, args=("gen_abc",), kwargs={})
    logging.getLogger("app.pipeline.generate").warning("provider slow: %s", "HTTP 429")
    task_postrun.send(sender=task, task_id="t1", task=task, args=("gen_abc",), kwargs={})
    logging.getLogger("celery.worker").warning("idle")
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["message"] == "provider slow: HTTP 429"
    assert (first["generation_id"], first["stage"]) == ("gen_abc", "generate")
    assert first["level"] == "WARNING" and first["logger"] == "app.pipeline.generate"
    assert (second["generation_id"], second["stage"]) == (None, None)  # reset after the task


def test_json_exception_is_one_line():
    buf = capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    [line] = buf.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_text_is_the_default_and_shows_the_context():
    buf = capture("text")
    logs.bind("gen_xyz", "store")
    logging.getLogger("app.pipeline.store").warning("uploaded")
    logs.bind(None)
    logging.getLogger("app").warning("plain")
    tagged, plain = buf.getvalue().splitlines()
    assert tagged.endswith("WARNING app.pipeline.store [gen_xyz store]: uploaded")
    assert plain.endswith("WARNING app: plain")


def test_requests_bind_the_generation_in_their_url(app_config):
    app = create_app({**app_config, "BFF_LOG_FORMAT": "json"})
    buf = capture("json")
    with app.test_request_context("/api/generate/gen_fromurl/events"):
        try:
            app.preprocess_request()
        except ApiError:  # no API key: the request stops at auth, the context is set
            pass
        logging.getLogger("app.api").warning("in the request")
    with app.test_request_context("/health"):
        app.preprocess_request()
        logging.getLogger("app.api").warning("no generation here")
    a, b = (json.loads(line) for line in buf.getvalue().splitlines())
    assert a["generation_id"] == "gen_fromurl"
    assert b["generation_id"] is None


def test_a_url_cannot_write_lines_of_its_own_in_the_log(app_config):
    app = create_app(app_config)
    buf = capture("text")
    forged = "x%0A2026-12-07 21:00:00,000 WARNING app.api.auth: key revoked%00"
    with app.test_request_context(f"/api/generate/{forged}/events"):
        try:
            app.preprocess_request()
        except ApiError:  # no API key: the request stops at auth, the context is set
            pass
        logging.getLogger("app.api").warning("in the request")
    [line] = buf.getvalue().splitlines()
    assert line.endswith("WARNING app.api: in the request") and "\x00" not in line


def test_gunicorns_own_lines_are_json_lines_too(monkeypatch, capsys):
    """Its access log and its errors, as gunicorn.conf.py sets it up."""
    from gunicorn.config import Config

    from app.platform.gunicorn_logs import Logger

    monkeypatch.setenv("BFF_LOG_FORMAT", "json")
    cfg = Config()
    cfg.set("accesslog", "-")
    log = Logger(cfg)
    log.error("worker timeout (pid:%s)", 42)
    log.access_log.info('127.0.0.1 - - "GET /health HTTP/1.1" 200 659')
    written = capsys.readouterr()
    lines = [json.loads(line) for line in (written.out + written.err).splitlines()]
    by_logger = {line["logger"]: line for line in lines}
    assert len(lines) == 2 and by_logger["gunicorn.access"]["level"] == "INFO"
    assert by_logger["gunicorn.error"]["message"] == "worker timeout (pid:42)"


def test_a_database_outage_in_a_stage_is_a_warning(caplog, monkeypatch):
    """Celery logs its retry at INFO: the outage must reach a WARNING filter."""
    import pytest
    from sqlalchemy.exc import OperationalError

    from app.pipeline import maintenance
    from workers.tasks import _noting_db_outage

    # (Noted in this process: later tests' takeovers would wait for it.)
    monkeypatch.setattr(maintenance, "_local_outage", {})

    with caplog.at_level(logging.WARNING), pytest.raises(OperationalError):
        with _noting_db_outage(Settings.from_env({})):
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable (OperationalError): the stage will be retried"
    ]


def test_a_statement_timeout_in_a_stage_holds_back_no_takeover(caplog, monkeypatch):
    """Noted as an outage, a statement timeout that recurs at every retry would
    keep stalled stages of dead workers from being taken over; it is retried
    (re-raised) all the same."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from app.pipeline import maintenance
    from workers.tasks import _noting_db_outage

    monkeypatch.setattr(maintenance, "_local_outage", {})
    settings = Settings.from_env({})
    timeout = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    with caplog.at_level(logging.WARNING), pytest.raises(OperationalError):
        with _noting_db_outage(settings):
            raise OperationalError("SELECT 1", {}, timeout)
    assert not maintenance.db_outage_recent(settings)
    assert [r.getMessage() for r in caplog.records] == [
        "database refused a statement (QueryCanceled): the stage will be retried"
    ]


def test_a_database_outage_in_a_beat_job_is_one_warning_a_pass(
    app_config, tmp_path, caplog, monkeypatch
):
    """Each pass raised, and Celery logged an ERROR with a traceback for every
    one: several a minute from redispatch and the webhook sweep alone."""
    from app.pipeline import maintenance

    monkeypatch.setattr(maintenance, "_local_outage", {})  # (as above)
    from workers.notify import sweep
    from workers.tasks import redispatch_task, roll_up_metrics_task, sweep_storage_task

    gone = tmp_path / "gone" / "bff.db"  # a folder that is not there: no database opens
    app = create_app({**app_config, "DATABASE_URL": f"sqlite:///{gone}"})
    with app.app_context(), caplog.at_level(logging.WARNING):
        for job in (redispatch_task, sweep, sweep_storage_task, roll_up_metrics_task):
            job()  # returns: beat sends the next pass
    assert [r.getMessage() for r in caplog.records] == [
        f"{job} skipped: database unavailable (OperationalError)"
        for job in (
            "maintenance.redispatch",
            "webhooks.sweep",
            "maintenance.sweep_storage",
            "maintenance.roll_up_metrics",
        )
    ]


def test_a_statement_the_database_refused_in_a_beat_job_is_not_an_outage(app_config, caplog):
    """SQLite says "no such table" with an OperationalError, as it says it
    cannot open the file: the pass raises (Celery's ERROR and traceback)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from workers.tasks import roll_up_metrics_task

    with sqlite3.connect(app_config["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE metric_rollups")
    app = create_app(app_config)
    with app.app_context(), pytest.raises(OperationalError, match="no such table"):
        roll_up_metrics_task()
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


def test_a_statement_timeout_is_not_an_outage():
    import psycopg
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from app.platform.db import went_away

    def wrapped(orig: Exception) -> OperationalError:
        return OperationalError("SELECT 1", None, orig)

    assert not went_away(wrapped(psycopg.errors.QueryCanceled("statement timeout")))
    assert went_away(wrapped(psycopg.OperationalError("connection failed")))
    assert went_away(wrapped(psycopg.errors.AdminShutdown("terminating connection")))
    assert not went_away(wrapped(psycopg.errors.DeadlockDetected("deadlock detected")))
    # No pooled connection came free in time: no DBAPI error behind it.
    assert went_away(PoolTimeout("QueuePool limit of size 15 overflow 0 reached"))


def test_the_sdks_request_lines_show_at_debug_only():
    """Each look at a running prediction was an INFO line of httpx's."""
    for level, shown in (("INFO", False), ("DEBUG", True)):
        buf = io.StringIO()
        logs.configure(Settings.from_env({"BFF_LOG_LEVEL": level}), stream=buf)
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).info('HTTP Request: GET http://r8/v1/predictions/p "200 OK"')
            logging.getLogger(name).warning("retrying")
        lines = buf.getvalue().splitlines()
        assert sum("HTTP Request" in line for line in lines) == (2 if shown else 0), level
        assert sum("retrying" in line for line in lines) == 2
    logs.configure(Settings.from_env({}))


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_the_openai_sdks_retries_show_at_debug_only(openai_chat, level, shown):
    """The SDK's own "Retrying request in …" notice is INFO, once per retry
    (the LLM client retries twice): detail, as its HTTP client's lines are."""
    from app.pipeline import llm

    buf = io.StringIO()
    env = {
        "BFF_LOG_LEVEL": level,
        "OPENAI_API_KEY": "sk-x",
        "OPENAI_BASE_URL": openai_chat.base_url,
    }
    settings = Settings.from_env(env)
    logs.configure(settings, stream=buf)
    openai_chat.script_error(503, "overloaded", retry_after=0.01)
    openai_chat.script_content("fine")
    try:
        answer = llm.client(settings).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        logs.configure(Settings.from_env({}))
    assert answer.choices[0].message.content == "fine"
    assert len(openai_chat.requests) == 2  # it did retry
    assert ("Retrying request" in buf.getvalue()) == shown, buf.getvalue()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_failed_statement_never_quotes_its_values(backend, tmp_path, request):
    """A statement's error goes to logs and tracebacks: its values (a prompt,
    a webhook secret) must not go with it."""
    from sqlalchemy import text

    from app.platform.db import make_engine

    url = f"sqlite:///{tmp_path}/x.db"
    if backend == "postgresql":
        url = request.getfixturevalue("service_env")["DATABASE_URL"]
    engine = make_engine(url)
    try:
        with pytest.raises(DBAPIError) as caught, engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table WHERE x = :x"), {"x": "whsec_s3cret"})
        assert "no_such_table" in str(caught.value)
        assert "whsec_s3cret" not in str(caught.value)
    finally:
        engine.dispose()
