"""Procfile, docker-compose.yml and the Celery app agree with each other and
with the contract (process types, commands, queues, task names, env vars); what
the processes do to themselves at start."""

from __future__ import annotations

import gc
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from celery.signals import worker_init

from app.pipeline import ALL_STAGES
from tests.conftest import CLEAN
from tests.support.procs import ROOT, procfile

PROCESSES = ("release", "web", "worker", "generator", "beat", "flower")
# Procfile process type -> compose service.
SERVICE = {"release": "migrate", **{p: p for p in PROCESSES[1:]}}
APP_ENV = """DATABASE_URL REDIS_URL STORAGE_BACKEND R2_ENDPOINT_URL R2_ACCESS_KEY_ID
R2_SECRET_ACCESS_KEY R2_BUCKET_NAME R2_CDN_URL REPLICATE_API_TOKEN OPENAI_API_KEY""".split()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def argv(command: str | list[str]) -> list[str]:
    """A command as argv, with ``${VAR:-default}`` replaced by its default."""
    if isinstance(command, list):
        command = shlex.join(command)
    return shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command))


def option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def test_procfile_has_exactly_the_contract_processes():
    pf = procfile()
    assert set(pf) == set(PROCESSES)
    assert argv(pf["release"]) == ["bff", "db", "upgrade"]  # release migrates
    web = argv(pf["web"])  # gunicorn on the app factory
    assert web[0] == "gunicorn" and web[-1] == "app:create_app()"


def test_compose_runs_the_same_processes_with_the_same_commands(compose):
    services = compose["services"]
    assert {"postgres", "redis", "minio"} <= set(services)
    pf = procfile()
    for process, service in SERVICE.items():
        assert service in services, service
        assert same(argv(services[service]["command"])) == same(argv(pf[process])), process


# Where state lives and how the password arrives differ by platform; the
# option must be there in both, its value may differ.
PLATFORM_VALUES = ("--db", "--basic-auth")


def same(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] if a.split("=", 1)[0] in PLATFORM_VALUES else a for a in args]


def run_here(args: list[str], tmp_path: Path, drop: tuple[str, ...] = (), **env: str):
    """``args`` run in the checkout as a process of its own: the test
    environment without the service variables (and ``drop``), a var dir
    of its own, and ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN and k not in drop}
    env = {**base, "BFF_VAR_DIR": str(tmp_path / "var"), **env}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_gunicorn_workers_freeze_the_loaded_app_out_of_gc():
    """Full collections walking the whole loaded app were the API's p99."""
    import runpy

    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_workers_consume_their_queues():
    pf = procfile()
    worker, generator = argv(pf["worker"]), argv(pf["generator"])
    for args in (worker, generator):
        assert args[:4] == ["celery", "-A", "workers", "worker"]
    assert option(worker, "-Q") == "pipeline"
    assert option(generator, "-Q") == "generation"
    # Waiting on providers must not hold a process each.
    assert option(generator, "--pool") in ("threads", "gevent", "eventlet")
    assert argv(pf["beat"])[:4] == ["celery", "-A", "workers", "beat"]
    flower = argv(pf["flower"])
    assert flower == ["celery", "-A", "workers", "flower", "--conf=./flowerconfig.py"]


def test_compose_wires_the_contract_env_to_every_app_service(compose):
    services = compose["services"]
    for process, service in SERVICE.items():
        env = services[service].get("environment") or {}
        missing = [v for v in APP_ENV if v not in env]
        assert not missing, (service, missing)
        assert env["STORAGE_BACKEND"] == "s3"
        assert env["DATABASE_URL"].startswith("postgresql")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["R2_ENDPOINT_URL"].startswith("http://minio:")
        if process != "release":
            deps = services[service].get("depends_on") or {}
            assert "migrate" in deps, service


def test_compose_gives_a_stop_the_time_gunicorn_takes(compose):
    """Docker's default 10 s would kill gunicorn inside its graceful_timeout."""
    graceful = re.search(
        r"^graceful_timeout = (\d+)", (ROOT / "gunicorn.conf.py").read_text(), re.M
    )
    for process in PROCESSES[1:]:
        grace = compose["services"][SERVICE[process]].get("stop_grace_period", "10s")
        assert int(grace.rstrip("s")) > int(graceful.group(1)), process


def test_compose_lets_a_stopping_generator_finish_a_blocking_provider_call(compose):
    """An OpenAI image call blocks its thread and has no idempotency key: a
    generator killed during one (a deploy's SIGKILL after the grace) pays
    for the image again when the stage runs again."""
    from app.providers.openai_images import CALL_TIMEOUT_S

    grace = compose["services"]["generator"].get("stop_grace_period", "10s")
    assert int(grace.rstrip("s")) > CALL_TIMEOUT_S


def test_compose_postgres_takes_the_connections_of_the_scale_the_readme_shows(compose):
    """``docker compose up --scale generator=4`` (README): each process's pool
    as docs/operations.md counts it, at the compose defaults. Past PostgreSQL's
    100 the stages of a busy moment failed "too many clients" and retried."""
    from app.platform.db import BEAT_POOL_SIZE, POOL_SIZE

    def concurrency(service: str) -> int:
        return int(option(argv(compose["services"][service]["command"]), "--concurrency"))

    gunicorn = re.search(
        r'_count\("GUNICORN_WORKERS", (\d+)\)', (ROOT / "gunicorn.conf.py").read_text()
    )
    web = int(gunicorn.group(1)) * POOL_SIZE
    generators = 4 * (concurrency("generator") + BEAT_POOL_SIZE)
    workers = concurrency("worker") * (1 + BEAT_POOL_SIZE)  # a prefork child runs one task
    admin = 5  # beat, a release, bff commands, psql
    command = compose["services"]["postgres"].get("command") or []
    given = option(argv(command), "-c") or "max_connections=100"
    assert int(given.removeprefix("max_connections=")) >= web + generators + workers + admin


def test_the_build_context_leaves_out_local_state_and_keys():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"var", ".venv", ".venv-tools", ".git"} <= set(ignored)


def test_the_image_installs_with_the_uv_make_uses():
    """The lock is read by the uv the Makefile pins; the Dockerfile says to keep
    its own equal, and a uv of another version may read the lock differently."""
    image = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    make = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert image and make and image.group(1) == make.group(1)


def test_compose_publishes_ports_on_the_hosts_loopback_only(compose):
    """MinIO with its default root credentials, gunicorn (which a client that
    sends a byte and stalls holds a thread of) and Flower: none of them on
    every interface of the host."""
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # `--scale generator=N` needs no fixed container name or host port.
    gen = compose["services"]["generator"]
    assert "container_name" not in gen and "ports" not in gen


def test_compose_bucket_lets_anyone_read_an_object_but_list_nothing(compose, tmp_path):
    """Run the createbucket service's command with a stand-in ``mc`` that
    keeps the policy it is given: GetObject on the bucket's objects only
    (mc's canned "download" policy also lets anyone list every key)."""
    stub = tmp_path / "mc"
    stub.write_text('#!/bin/sh\n[ "$2" != set-json ] || cp "$3" "$(dirname "$0")/policy.json"\n')
    stub.chmod(0o755)
    command = shlex.split(compose["services"]["createbucket"]["entrypoint"])
    env = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    subprocess.run(command, env=env, check=True, timeout=30)
    policy = json.loads((tmp_path / "policy.json").read_text())
    [statement] = policy["Statement"]
    assert statement["Action"] == ["s3:GetObject"]
    assert statement["Resource"] == ["arn:aws:s3:::bff/*"]


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
