"""Scenario 5: a provider storm. Replicate and OpenAI answer 429s (with their
reset hints) and 500s for a while, then recover. Every generation completes,
with backoff honouring the hints, and each image is paid for once: a refused
create is not billed and is never mistaken for a prediction."""

from __future__ import annotations

import pytest

from tests.faults.stack import FaultStack
from tests.integration.helpers import stage_of

pytestmark = pytest.mark.services


def test_429s_and_500s_then_recovery(faults: FaultStack):
    faults.replicate.inject("throttle", times=6, seconds=1)
    faults.replicate.inject("server_error", times=4)
    faults.openai.inject("rate_limit", times=6, ms=800)
    faults.openai.inject("server_error", times=3)
    user = faults.user("storm")
    plan = [("google-imagen", 1)] * 5 + [("openai-gpt-image", 1)] * 5 + [("openai-dalle3", 1)] * 2
    batch = faults.submit_batch(user, plan)

    gens = faults.wait_final(batch, timeout=60)
    faults.assert_nothing_lost(batch, gens)
    assert not faults.replicate.failures and not faults.openai.failures, "the storm happened"
    assert faults.replicate.counters["create_attempt"] == faults.replicate.creates + 10
    retried = [g for g in gens.values() if stage_of(g, "generate")["attempts"] > 1]
    assert retried, "some generations rode the storm out with retries"
