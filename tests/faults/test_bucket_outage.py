"""Scenario 6: the bucket goes away while images are being stored.

- A short outage is ridden out by the store stage's own retries (and images a
  provider returned as bytes are kept inline by ``generate`` meanwhile).
- A long one fails the generations at ``store``, keeping the provider's output
  reference; ``POST /api/generate/<id>/retry`` then completes each without a
  new create.
"""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import text

from tests.faults.stack import FaultStack
from tests.integration.helpers import stage_of
from tests.support import procs as P

pytestmark = pytest.mark.services

PLAN = [("google-imagen", 1)] * 6 + [("openai-gpt-image", 1)] * 4 + [("openai-dalle3", 1)] * 2


def test_short_outage_is_ridden_out(faults: FaultStack):
    user = faults.user("bucket-blip")
    faults.bucket.down()
    try:
        batch = faults.submit_batch(user, PLAN)
        # Down until a store attempt has failed (however loaded the machine is).
        P.wait_for(lambda: _store_retrying(faults, list(batch.counts)), 30, "a store retry")
    finally:
        faults.bucket.restore()
    gens = faults.wait_final(batch, timeout=60)
    faults.assert_nothing_lost(batch, gens)
    assert any(stage_of(g, "store")["attempts"] > 1 for g in gens.values())


def _store_retrying(st: FaultStack, ids: list[str]) -> bool:
    with st.app.extensions["bff"].db.session() as s:
        return bool(
            s.execute(
                text(
                    "SELECT count(*) FROM generation_stages WHERE name = 'store' "
                    "AND generation_id = ANY(:ids) AND error LIKE '%retrying%'"
                ),
                {"ids": ids},
            ).scalar_one()
        )


def test_long_outage_fails_at_store_and_retry_completes_without_a_new_create(
    faults: FaultStack,
):
    user = faults.user("bucket-down")
    faults.bucket.down()
    try:
        batch = faults.submit_batch(user, PLAN)
        failed = faults.wait_final(batch, timeout=60)
    finally:
        faults.bucket.restore()
    for gen in failed.values():
        assert gen["status"] == "failed", gen
        assert gen["error"]["stage"] == "store", gen["error"]
        assert "storage unavailable" in gen["error"]["message"]
    paid = faults.paid_images()
    assert paid == len(PLAN)

    for gen_id in batch.counts:
        resp = requests.post(
            f"{faults.base_url}/api/generate/{gen_id}/retry", headers=user.headers, timeout=10
        )
        assert resp.status_code == 202, resp.text
    gens = faults.wait_final(batch, timeout=40)
    faults.assert_nothing_lost(batch, gens)
    assert faults.paid_images() == paid, "no image was paid for twice"
