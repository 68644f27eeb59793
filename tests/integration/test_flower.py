"""Flower, started from the Procfile's ``flower`` line against the test Redis,
sees the stack's workers behind basic auth and shows which generation each
task serves (the task argument is the generation id)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.integration.helpers import submit, wait_final
from tests.support import procs as P
from tests.support.services import free_port

pytestmark = pytest.mark.services
AUTH = ("ops", "s3cret-flower")


@pytest.fixture(scope="module")
def flower(stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flower")
    port = free_port()
    env = {
        **stack.env,
        "FLOWER_PORT": str(port),
        "FLOWER_BASIC_AUTH": ":".join(AUTH),
        "FLOWER_DB": str(folder / "flower.db"),
    }
    proc = P.Process("flower", P.procfile()["flower"], env, folder)
    base = f"http://127.0.0.1:{port}"
    try:
        P.wait_for(lambda: P.http_ok(base + "/healthcheck"), 60, "flower", procs=[proc])
        yield base, proc, folder
    finally:
        proc.stop()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (IPv4)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_flower_refuses_to_start_without_credentials(stack, tmp_path):
    env = {**stack.env, "FLOWER_PORT": str(free_port()), "FLOWER_BASIC_AUTH": ""}
    proc = P.Process("flower-open", P.procfile()["flower"], env, tmp_path)
    try:
        P.wait_for(lambda: not proc.alive(), 60, "flower to refuse", procs=[])
        assert proc.popen.returncode != 0
        assert "set FLOWER_BASIC_AUTH=user:password" in proc.output()
    finally:
        proc.stop()


def test_flower_listens_on_loopback_only(flower):
    base, _, _ = flower
    assert _listening_addresses(int(base.rsplit(":", 1)[1])) == {"127.0.0.1"}


def test_flower_lists_the_workers_behind_basic_auth(flower):
    base, _, _ = flower
    assert requests.get(base + "/api/workers", timeout=10).status_code == 401
    assert requests.get(base + "/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
    deadline = time.monotonic() + 30
    while True:
        resp = requests.get(base + "/api/workers?refresh=1", auth=AUTH, timeout=20)
        assert resp.status_code == 200, resp.text
        names = set(resp.json())
        if any(n.startswith("worker@") for n in names) and any(
            n.startswith("generator@") for n in names
        ):
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.5)


def _seen_by_flower(base: str, gen_id: str) -> dict[str, dict]:
    tasks = requests.get(base + "/api/tasks", auth=AUTH, timeout=10).json()
    return {t["name"]: t for t in tasks.values() if gen_id in (t.get("args") or "")}


def test_flower_shows_the_generation_id_of_each_task(flower, stack):
    base, _, folder = flower
    user = stack.user("flower-user")

    def job() -> str:
        gen_id = submit(
            stack.base_url, user.headers, "sage linen jumpsuit", settings={"provider": "local"}
        )
        wait_final(stack.base_url, user.headers, gen_id)
        return gen_id

    # Flower answers before its event receiver is connected, and events sent
    # before that are never seen: a job it has seen end says it is.
    deadline = time.monotonic() + 60
    while True:
        warm_up, patience = job(), time.monotonic() + 5
        while time.monotonic() < patience and "pipeline.store" not in _seen_by_flower(
            base, warm_up
        ):
            time.sleep(0.5)
        if "pipeline.store" in _seen_by_flower(base, warm_up):
            break
        assert time.monotonic() < deadline, "Flower has seen no job end in a minute"
    gen_id = job()
    deadline = time.monotonic() + 30
    while True:
        ours = _seen_by_flower(base, gen_id)
        # The generation is final once store has recorded it; the task's own
        # task-succeeded event reaches Flower a moment later.
        done = ours.get("pipeline.store", {}).get("state") == "SUCCESS"
        if len(ours) == 7 and done and all(t.get("root_id") for t in ours.values()):
            break
        seen = {n: (t.get("state"), bool(t.get("root_id"))) for n, t in ours.items()}
        assert time.monotonic() < deadline, f"{len(ours)} tasks: {seen}"
        time.sleep(0.5)
    # One chain per generation: its seven tasks share the first one's id as their root.
    assert {t["root_id"] for t in ours.values()} == {ours["pipeline.analyze"]["uuid"]}
    # Each task's id names its generation and stage (what the worker's log lines show).
    for name, task in ours.items():
        assert task["uuid"].startswith(f"{gen_id}.{name.removeprefix('pipeline.')}."), task
