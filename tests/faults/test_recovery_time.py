"""Recovery with the default timings (``BFF_STALL_TIMEOUT`` 30 s, a
maintenance beat every 10 s): a SIGKILLed generator's or pipeline worker's
jobs resume within a minute of the kill, and nothing is paid for twice. A
running stage renews its lease (``lease.heartbeat``), so the stall timeout
can be that short without taking over live work."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import fault_stack
from tests.faults.stack import FaultStack
from tests.faults.test_workers_killed import LIGHT_STAGES, running_stages
from tests.support import procs as P

pytestmark = pytest.mark.services
RESUMED_WITHIN = 60.0


@pytest.fixture(scope="module")
def defaults(service_env, s3_server, tmp_path_factory):
    with fault_stack(service_env, s3_server, tmp_path_factory, {}, "bff-faults-defaults") as st:
        yield st


def all_final_within_a_minute(st: FaultStack, batch, since: float, what: str) -> None:
    """Every job of ``batch`` final, nothing lost, within RESUMED_WITHIN of ``since``."""
    gens = st.wait_final(batch, timeout=RESUMED_WITHIN + 30)
    took = time.monotonic() - since
    st.assert_nothing_lost(batch, gens)  # a saved prediction resumed: no second create
    assert took < RESUMED_WITHIN, f"recovered {took:.0f} s after {what}"
    print(f"{what}: all final {took:.1f} s after it")


def test_generator_killed_with_predictions_running(defaults: FaultStack):
    st = defaults
    st.replicate.reset()
    st.replicate.latency = 6.0
    batch = st.submit_batch(st.user("kill-generator"), [("google-imagen", 1)] * 5)
    P.wait_for(
        lambda: st.replicate.creates == 5 and not st.replicate.never_polled(),
        30,
        "five predictions created and polled",
    )
    st.kill("generator")
    killed = time.monotonic()
    st.start("generator")  # as its process manager would
    all_final_within_a_minute(st, batch, killed, "the generator's kill")


def test_pipeline_worker_killed_mid_burst(defaults: FaultStack):
    st = defaults
    st.replicate.reset()
    st.replicate.latency = 0.3
    batch = st.submit_batch(st.user("kill-worker"), [("google-imagen", 1)] * 12)
    ids = list(batch.counts)
    P.wait_for(
        lambda: bool(running_stages(st, ids, LIGHT_STAGES)), 20, "a light stage", interval=0.005
    )
    st.kill("worker")
    killed = time.monotonic()
    st.start("worker")
    all_final_within_a_minute(st, batch, killed, "the pipeline worker's kill")


def test_redis_restarted_empty_mid_burst(defaults: FaultStack):
    st = defaults
    st.replicate.reset()
    st.replicate.latency = 3.0
    batch = st.submit_batch(st.user("redis-restart"), [("google-imagen", 1)] * 8)
    P.wait_for(lambda: st.replicate.creates >= 3, 30, "predictions to be created")
    st.redis.kill()
    lost = time.monotonic()
    time.sleep(2)
    st.redis.start()  # empty: every queued and countdown message is gone
    all_final_within_a_minute(st, batch, lost, "Redis went")
    for kind in ("web", "worker", "generator", "beat"):  # nobody restarted anything
        assert st.procs[kind].alive(), kind
