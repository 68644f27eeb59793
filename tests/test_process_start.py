"""What the processes do to themselves at start: the Celery app's tasks and
routes, Flower's guard, a worker's pool and GC, gunicorn's settings, a bad
setting or log level in a process of its own."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery.signals import worker_init

from app.pipeline import ALL_STAGES
from tests.conftest import CLEAN
from tests.support.procs import ROOT


def run_here(args: list[str], tmp_path: Path, drop: tuple[str, ...] = (), **env: str):
    """``args`` run in the checkout as a process of its own: the test
    environment without the service variables (and ``drop``), a var dir
    of its own, and ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN and k not in drop}
    env = {**base, "BFF_VAR_DIR": str(tmp_path / "var"), **env}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_gunicorn_workers_freeze_the_loaded_app_out_of_gc_and_end_streams_on_a_stop():
    """Full collections walking the whole loaded app were the API's p99; an
    open event stream held a stopping worker for its graceful timeout."""
    import runpy
    import signal

    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    handler = signal.getsignal(signal.SIGTERM)  # the worker's: not this session's to keep
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
        assert signal.getsignal(signal.SIGTERM) != handler  # events.end_streams_on's
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, handler)


def test_celery_app_registers_and_routes_the_pipeline_tasks(tmp_path):
    """``celery -A workers`` imports ``workers``: do exactly that, in a clean
    process configured like an operator's (only the environment)."""
    script = (
        "import json, workers\n"
        "app = workers.celery\n"
        "names = sorted(n for n in app.tasks if not n.startswith('celery.'))\n"
        "routes = {n: app.amqp.router.route({}, n)['queue'].name for n in names}\n"
        "print(json.dumps({'names': names, 'routes': routes, 'main': workers.app is app}))\n"
    )
    done = run_here(
        [sys.executable, "-c", script],
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'bff.db'}",
        REDIS_URL="redis://127.0.0.1:6399/0",  # never contacted: routing is local
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["main"]
    expected = {f"pipeline.{s}" for s in ALL_STAGES}
    assert expected <= set(info["names"]), info["names"]
    assert len(expected) == 8  # the seven and the optional refine
    # Calls out (a stopped job's Replicate cancels, webhooks too) on their own queue.
    provider_calls = (
        "pipeline.generate",
        "pipeline.refine",
        "providers.stop_paid_work",
        "webhooks.deliver",
    )
    for name in (*expected, "providers.stop_paid_work", "webhooks.deliver"):
        queue = "generation" if name in provider_calls else "pipeline"
        assert info["routes"][name] == queue, (name, info["routes"][name])
    # Everything else (maintenance, feedback) stays off the provider queue.
    for name, queue in info["routes"].items():
        if name not in provider_calls:
            assert queue == "pipeline", (name, queue)


def test_flower_started_without_its_config_file_still_needs_credentials(tmp_path):
    """Plain ``celery -A workers flower`` from another folder: Flower reads no
    ``flowerconfig.py`` there, and must refuse all the same."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in CLEAN and k != "FLOWER_BASIC_AUTH"},
        "PYTHONPATH": str(ROOT),
        "BFF_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'bff.db'}",
    }
    celery = Path(sys.executable).with_name("celery")
    cmd = [str(celery), "-A", "workers", "flower", "--address=127.0.0.1", "--port=0"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        ([], False),
        (["--basic-auth="], False),
        (["--basic-auth=ops"], False),
        (["--basic-auth=ops:pw"], True),  # credentials on Flower's own command line
        (["--basic_auth=ops:pw"], True),
        (["--help"], True),  # starts nothing
    ],
)
def test_the_flower_guard_takes_credentials_from_the_command_line_too(monkeypatch, argv, starts):
    import click

    from workers.flower import guard

    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    ctx = click.Context(click.Group("celery"))
    ctx.invoked_subcommand = "flower"
    with ctx:
        if starts:
            guard(argv)
        else:
            with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
                guard(argv)
    ctx.invoked_subcommand = "worker"
    with ctx:
        guard([])  # any other command: nothing to check


@pytest.mark.parametrize(
    ("cwd", "port", "refused"),
    [
        (ROOT, "5555", None),
        # A unit file without the checkout as its working directory:
        # Flower's FileNotFoundError traceback.
        (Path("/"), "5555", "Flower's --conf=./flowerconfig.py is not in /: start it from"),
        (ROOT, "fifty", "FLOWER_PORT='fifty' cannot be used: it must be a port number"),
        # An `.env` line `FLOWER_PORT=`: set, so Flower and flowerconfig.py read it.
        (ROOT, "", "FLOWER_PORT='' cannot be used: it must be a port number"),
    ],
)
def test_the_flower_guard_says_in_one_line_what_flower_cannot_read(monkeypatch, cwd, port, refused):
    import click

    from workers.flower import guard

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw")
    monkeypatch.setenv("FLOWER_PORT", port)
    monkeypatch.chdir(cwd)
    ctx = click.Context(click.Group("celery"))
    ctx.invoked_subcommand = "flower"
    with ctx:
        if refused is None:
            guard(["--conf=./flowerconfig.py"])
        else:
            with pytest.raises(SystemExit, match=re.escape(refused)):
                guard(["--conf=./flowerconfig.py"])


@pytest.mark.parametrize(
    ("auth", "accounts"),
    [
        ("ops:pw", ["ops:pw"]),
        # Flower's own form for several accounts: each logs in with its own
        # password (read as one, nobody could but "ops" with "pw,dev:pw2").
        ("ops:pw,dev:pw2", ["ops:pw", "dev:pw2"]),
        ("ops:pw,dev", None),  # an account without a password
        ("ops:pw,", None),
    ],
)
def test_flowerconfig_gives_flower_each_account(monkeypatch, auth, accounts):
    import runpy

    monkeypatch.setenv("FLOWER_BASIC_AUTH", auth)
    if accounts is None:
        with pytest.raises(SystemExit, match="set FLOWER_BASIC_AUTH=user:password"):
            runpy.run_path(str(ROOT / "flowerconfig.py"))
    else:
        assert runpy.run_path(str(ROOT / "flowerconfig.py"))["basic_auth"] == accounts


def test_flowerconfig_bounds_the_task_history_flower_keeps(monkeypatch):
    """Flower saves and frees every task it keeps when it stops: its default
    100,000 made a stop take 11-15 s (past Docker's 10 s default grace). The
    name must be one of Flower's options: tornado ignores the others."""
    import runpy

    from flower.options import options

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw")
    conf = runpy.run_path(str(ROOT / "flowerconfig.py"))
    assert "max_tasks" in options and options.max_tasks == 100000  # Flower's default
    assert conf["persistent"] is True and conf["max_tasks"] == 10000


# --------------------------------------------------- a worker process at start


class Worker:
    """What a worker_init handler reads of Celery's WorkController."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency


def test_a_starting_worker_fits_its_pool_and_freezes_what_it_loaded():
    import workers.tasks  # noqa: F401  (connects the signal handlers)
    from workers import flask_app

    db = flask_app.extensions["bff"].db
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        worker_init.send(sender=Worker(4))  # prefork: the default pool
        assert db.engine.pool.size() == 15
        worker_init.send(sender=Worker(32))  # the generator's threads
        # A connection for each thread: none waits for another's slow provider call.
        assert db.engine.pool.size() == 32
        with db.session() as session, db.read() as reader:
            assert session.get_bind() is db.engine and reader.get_bind().pool is db.engine.pool
        # the loaded app is out of the collector's sight: full collections stay short
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_a_stage_waits_as_often_as_its_runner_says(monkeypatch):
    """Celery's retry count covers every wait (provider polls, rate-limit
    tokens): it must not cap them. With ``max_retries=20`` the 21st wait
    raised MaxRetriesExceededError and dropped a live job's message."""
    from celery.canvas import Signature
    from celery.exceptions import Retry

    import workers
    import workers.tasks as tasks
    from app.pipeline.runner import Outcome

    sent: list[dict] = []
    monkeypatch.setattr(tasks, "run_stage", lambda *a, **k: Outcome(True, 0.5))
    monkeypatch.setattr(Signature, "apply_async", lambda sig, **_: sent.append(sig.options))
    task = tasks.generate
    with workers.flask_app.app_context():
        for retries in (0, 20, 500):
            task.push_request(
                id="t-1",
                args=["gen_waiting"],
                kwargs={},
                retries=retries,
                called_directly=False,
                is_eager=False,
                delivery_info={},
            )
            try:
                with pytest.raises(Retry) as raised:
                    tasks._run(task, "gen_waiting", "generate")
            finally:
                task.pop_request()
            assert raised.value.when == 0.5
            assert sent[-1]["retries"] == retries + 1 and sent[-1]["countdown"] == 0.5
    assert len(sent) == 3


BAD_SETTING = "BFF_DB_STATEMENT_TIMEOUT='-1' cannot be used: it must be from 0.001 to 2147483"


def test_a_bad_setting_stops_gunicorn_in_one_sentence(monkeypatch):
    import runpy

    monkeypatch.setenv("BFF_DB_STATEMENT_TIMEOUT", "-1")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    with pytest.raises(SystemExit, match=re.escape(f"Error: {BAD_SETTING}")):
        conf["on_starting"](None)


@pytest.mark.parametrize(("threads", "warned"), [("16", True), ("24", True), ("32", False)])
def test_gunicorn_warns_when_event_streams_could_take_every_thread(
    monkeypatch, caplog, threads, warned
):
    """Lowering GUNICORN_THREADS alone let the 24 streams a process admits
    hold all its threads: /health and every request waited behind them."""
    import logging
    import runpy

    monkeypatch.setenv("GUNICORN_THREADS", threads)
    monkeypatch.delenv("BFF_SSE_MAX_STREAMS", raising=False)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    with caplog.at_level(logging.WARNING, logger="gunicorn.error"):
        conf["on_starting"](None)
    said = [r.getMessage() for r in caplog.records if r.name == "gunicorn.error"]
    expected = (
        f"BFF_SSE_MAX_STREAMS=24 leaves no thread of GUNICORN_THREADS={threads} for other "
        "requests: raise GUNICORN_THREADS or lower BFF_SSE_MAX_STREAMS"
    )
    assert said == ([expected] if warned else [])


def test_the_warning_counts_the_threads_gunicorn_runs(monkeypatch, caplog):
    """--threads 8 (or GUNICORN_CMD_ARGS) overrides the file's 32."""
    import logging
    import runpy
    from types import SimpleNamespace

    monkeypatch.delenv("GUNICORN_THREADS", raising=False)
    monkeypatch.delenv("BFF_SSE_MAX_STREAMS", raising=False)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    with caplog.at_level(logging.WARNING, logger="gunicorn.error"):
        conf["on_starting"](SimpleNamespace(cfg=SimpleNamespace(threads=8)))
    said = [r.getMessage() for r in caplog.records if r.name == "gunicorn.error"]
    assert said and "GUNICORN_THREADS=8 " in said[0], said


def test_a_bad_setting_stops_a_celery_process_in_one_line(tmp_path):
    """Not the 75-line traceback of Celery failing to import ``workers``."""
    celery = str(Path(sys.executable).parent / "celery")
    done = run_here([celery, "-A", "workers", "beat"], tmp_path, BFF_DB_STATEMENT_TIMEOUT="-1")
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: {BAD_SETTING}"


@pytest.mark.parametrize(
    ("bff_level", "celery_level", "root"),
    [
        (None, "WARNING", "INFO"),  # `celery worker` without --loglevel: silent before
        ("WARNING", "INFO", "WARNING"),  # the Procfile's --loglevel INFO: noisy before
    ],
)
def test_bff_log_level_decides_in_a_celery_process(tmp_path, bff_level, celery_level, root):
    """Celery's worker and beat set the root logger to their --loglevel once
    the app has set it up (Worker.setup_logging: ``app.log.setup``)."""
    code = (
        "import logging, workers; "
        f"workers.celery.log.setup({celery_level!r}); "
        "print(logging.getLevelName(logging.getLogger().level))"
    )
    level = {"BFF_LOG_LEVEL": bff_level} if bff_level else {}
    done = run_here([sys.executable, "-c", code], tmp_path, drop=("BFF_LOG_LEVEL",), **level)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == root


@pytest.mark.parametrize("var,raw", [("GUNICORN_WORKERS", "two"), ("GUNICORN_THREADS", "0")])
def test_a_bad_gunicorn_count_is_one_sentence(monkeypatch, var, raw):
    import runpy

    monkeypatch.setenv(var, raw)
    with pytest.raises(SystemExit, match=f"{var}='{raw}' cannot be used: it must be a whole"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
