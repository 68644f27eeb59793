"""Scenario 4: PostgreSQL goes away for ~10 s with jobs in flight. The stack
reaches it through a ``TcpSwitch``; cutting it refuses new connections and
severs open ones (the shared server itself is never stopped).

Meanwhile the API answers 503 JSON (with ``Retry-After``) for reads and
submits alike; the workers' stage tasks retry with backoff and, once the
database is back, every generation completes without a second create (the
prediction ids were checkpointed before waiting on them)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.faults.stack import FaultStack
from tests.support import procs as P

pytestmark = pytest.mark.services

OUTAGE_S = 10.0


def _assert_503_json(resp: requests.Response) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "service_unavailable"
    assert resp.headers.get("Retry-After")


def test_postgres_outage_answers_503_and_workers_finish_afterwards(faults: FaultStack):
    faults.replicate.latency = 3.0
    user = faults.user("db-down")
    plan = [("google-imagen", 1)] * 10 + [("google-imagen", 2)] * 2
    batch = faults.submit_batch(user, plan)
    some_id = next(iter(batch.counts))
    P.wait_for(lambda: faults.replicate.creates >= 6, 30, "predictions to be created")

    faults.database.down()
    cut_at = time.monotonic()
    try:
        checks = 0
        api, h = f"{faults.base_url}/api/generate", user.headers
        body = {"prompt": "submitted while the database is down"}
        while time.monotonic() - cut_at < OUTAGE_S:
            _assert_503_json(requests.get(f"{api}/{some_id}", headers=h, timeout=10))
            _assert_503_json(requests.post(f"{api}/from-prompt", headers=h, json=body, timeout=10))
            _assert_503_json(requests.get(api, headers=h, timeout=10))
            health = requests.get(f"{faults.base_url}/health", timeout=10)
            assert health.status_code == 503
            assert health.json()["checks"]["database"] != "ok", health.json()
            checks += 1
            time.sleep(0.5)
    finally:
        faults.database.restore()
    assert checks >= 5

    gens = faults.wait_final(batch, timeout=90)
    faults.assert_nothing_lost(batch, gens)
    with faults.app.extensions["bff"].db.session() as s:  # no submit slipped through
        from sqlalchemy import text

        n = s.execute(
            text("SELECT count(*) FROM generations WHERE user_id = :u"), {"u": user.id}
        ).scalar_one()
    assert n == len(plan)
