"""Procfile, docker-compose.yml and the image agree with each other and with
the contract (process types, commands, queues, env vars, ports, grace periods)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

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
    # Flower's password goes to Flower alone, not to every process's environment.
    holders = [
        s for s, spec in services.items() if "FLOWER_BASIC_AUTH" in (spec.get("environment") or {})
    ]
    assert holders == ["flower"], holders


def test_compose_web_is_healthy_only_while_health_answers_200(compose):
    """The healthcheck's own command, run against a server answering as
    /health does when all is well and when something is unreachable."""
    web = compose["services"]["web"]
    test = web["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and "http://127.0.0.1:3001/health" in test[-1], test
    port = re.search(r"_count\('PORT', (\d+)\)", (ROOT / "gunicorn.conf.py").read_text())
    assert web["ports"] == [f"127.0.0.1:{port.group(1)}:{port.group(1)}"]
    for status, healthy in ((200, True), (503, False)):
        with answering(status) as url:
            command = [sys.executable, *test[2:-1], test[-1].replace("http://127.0.0.1:3001", url)]
            done = subprocess.run(command, capture_output=True, timeout=30)
        assert (done.returncode == 0) == healthy, (status, done.stderr)


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A local HTTP server answering every GET with ``status``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
