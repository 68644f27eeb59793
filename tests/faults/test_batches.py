"""The fault tests' promise for batches: a batch accepted while the broker is
down is sent later by the dispatcher and completes, every image paid once and
stored with its row; the same batch sent at once from several threads with
one ``Idempotency-Key`` makes one batch."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import text

from tests.faults.stack import Batch, FaultStack
from tests.support import procs as P

pytestmark = pytest.mark.services


def _items(n: int) -> list[dict]:
    return [
        {"prompt": f"camel coat, look {i}", "settings": {"provider": "google-imagen"}}
        for i in range(n)
    ]


def test_a_batch_accepted_while_the_broker_is_down_completes(faults: FaultStack):
    user = faults.user("batch-broker-down")
    faults.redis.kill()
    resp = requests.post(
        f"{faults.base_url}/api/batches",
        json={"items": _items(6)},
        headers=user.headers,
        timeout=30,
    )
    assert resp.status_code == 202, resp.text  # stored: the dispatcher sends it later
    batch_id = resp.json()["id"]
    time.sleep(1)
    faults.redis.start()

    def shown() -> dict:
        url = f"{faults.base_url}/api/batches/{batch_id}"
        return requests.get(url, headers=user.headers, timeout=10).json()

    # Its status is read from its members; finishedAt is written a moment after
    # the last one completes (by that worker, or the beat's sweep).
    P.wait_for(lambda: shown()["finishedAt"] is not None, 90, "the batch to finish")
    assert shown()["status"] == "completed" and shown()["counts"]["completed"] == 6
    page = requests.get(
        f"{faults.base_url}/api/generate", params={"batchId": batch_id, "limit": 100},
        headers=user.headers, timeout=10,
    ).json()["items"]  # fmt: skip
    gens = {g["id"]: g for g in page}
    faults.assert_nothing_lost(Batch(user, dict.fromkeys(gens, 1)), gens)


def test_concurrent_duplicate_batches_make_one(faults: FaultStack):
    user = faults.user("batch-idem")

    def send(_: int) -> requests.Response:
        return requests.post(
            f"{faults.base_url}/api/batches",
            headers={**user.headers, "Idempotency-Key": "ss27"},
            json={
                "items": [
                    {"prompt": f"look {i}", "settings": {"provider": "local"}} for i in range(5)
                ]
            },
            timeout=30,
        )

    answers = P.together(6, send)
    assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    with faults.app.extensions["bff"].db.session() as s:
        count = "SELECT count(*) FROM {} WHERE user_id = :u"
        assert s.execute(text(count.format("batches")), {"u": user.id}).scalar_one() == 1
        assert s.execute(text(count.format("generations")), {"u": user.id}).scalar_one() == 5
