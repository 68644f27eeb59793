"""Scenarios 1 and 2: a worker SIGKILLed with work in hand (no ack, no
cleanup), a new one started. The message stays unacked in Redis; the beat's
dispatcher re-sends the stalled stage after ``BFF_STALL_TIMEOUT`` and the
runner's lease lets exactly one copy run it. No prediction is created twice."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tests.faults.stack import Batch, FaultStack
from tests.support import procs as P

pytestmark = pytest.mark.services

LIGHT_STAGES = ("enhance", "persona", "route", "optimize", "store")  # the `pipeline` queue


def running_stages(st: FaultStack, ids: list[str], names: tuple[str, ...]) -> list[tuple]:
    with st.app.extensions["bff"].db.session() as s:
        rows = s.execute(
            text(
                "SELECT generation_id, name FROM generation_stages "
                "WHERE status = 'running' AND generation_id = ANY(:ids) AND name = ANY(:names)"
            ),
            {"ids": ids, "names": list(names)},
        ).all()
    return [tuple(r) for r in rows]


def attempts(st: FaultStack, gen_id: str, stage: str) -> int:
    with st.app.extensions["bff"].db.session() as s:
        return s.execute(
            text("SELECT attempts FROM generation_stages WHERE generation_id = :g AND name = :n"),
            {"g": gen_id, "n": stage},
        ).scalar_one()


def test_pipeline_worker_killed_mid_stage(faults: FaultStack):
    faults.replicate.latency = 0.3
    user = faults.user("killed-pipeline")
    batch = faults.submit_batch(user, [("google-imagen", 1)] * 12)
    ids = list(batch.counts)
    P.wait_for(
        lambda: bool(running_stages(faults, ids, LIGHT_STAGES)),
        20,
        "a pipeline stage to be running",
        interval=0.005,
    )
    faults.kill("worker")
    # A light stage takes milliseconds: only what is still "running" now that
    # its worker is dead was really interrupted (the one seen may have finished).
    interrupted = running_stages(faults, ids, LIGHT_STAGES)
    faults.start("worker")

    gens = faults.wait_final(batch, timeout=60)
    faults.assert_nothing_lost(batch, gens)
    for gen_id, stage in interrupted:  # the interrupted stage ran again
        assert attempts(faults, gen_id, stage) >= 2, (gen_id, stage)


def test_generator_killed_while_predictions_run(faults: FaultStack):
    faults.replicate.latency = 4.0
    user = faults.user("killed-generator")
    batch = faults.submit_batch(user, [("google-imagen", 1)] * 8 + [("google-imagen", 2)] * 2)
    # Killed once every prediction is created and its id saved (each has been
    # polled: a poll comes after the save), and before they have all run. A
    # kill with a create in flight may cost one prediction more: the
    # documented gap (an id never received), which this test is not about;
    # killed at an arbitrary moment, it failed now and then when a create was
    # in flight.
    P.wait_for(
        lambda: faults.replicate.creates == 12 and not faults.replicate.never_polled(),
        30,
        "every prediction created and polled",
        interval=0.02,
    )
    faults.kill("generator")
    killed_at = faults.replicate.creates
    still_running = time.time() < max(faults.replicate.create_times) + faults.replicate.latency
    faults.start("generator")

    gens = faults.wait_final(batch, timeout=60)
    faults.assert_nothing_lost(batch, gens)  # resumed the saved predictions: 12 creates
    assert killed_at == 12 and still_running


def test_generator_killed_while_refine_predictions_run(faults: FaultStack):
    """Stage 7 pays once too: the refine's prediction ids are saved before it
    waits, so the stage that takes over from the dead generator polls them."""
    faults.replicate.latency = 4.0
    user = faults.user("killed-refiner")
    ids = [
        faults.submit(user, "google-imagen", f"linen shirt, look {i}", upscale=2) for i in range(10)
    ]

    def refines_created_and_polled() -> bool:
        refines = [b for b in list(faults.replicate.create_bodies) if b.get("version")]
        return len(refines) == 10 and not faults.replicate.never_polled()

    P.wait_for(
        refines_created_and_polled, 60, "every refine prediction created and polled", interval=0.02
    )
    faults.kill("generator")
    still_running = time.time() < max(faults.replicate.create_times) + faults.replicate.latency
    faults.start("generator")

    batch = Batch(user, dict.fromkeys(ids, 2))  # each: its image and its upscaled variant
    gens = faults.wait_final(batch, timeout=90)
    faults.assert_nothing_lost(batch, gens)  # 20 creates for 20 images: none paid twice
    assert still_running and faults.replicate.creates == 20
    for gen in gens.values():
        variants = sorted(a["variant"] for a in gen["assets"])
        assert variants == ["original", "upscaled"], gen["assets"]
