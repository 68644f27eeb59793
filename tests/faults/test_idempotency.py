"""Scenario 7: the same ``Idempotency-Key`` sent at once from several threads
to the real gunicorn (two processes, threads each) on PostgreSQL makes one
generation; every caller gets its id. The same key with another body is 409."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import text

from tests.faults.stack import Batch, FaultStack
from tests.support.procs import together

pytestmark = pytest.mark.services


def test_concurrent_duplicates_make_one_generation(faults: FaultStack):
    user = faults.user("idem")
    keys = [f"order-{i}" for i in range(3)]

    def send(i: int) -> requests.Response:
        key = keys[i % len(keys)]
        return requests.post(
            f"{faults.base_url}/api/generate/from-prompt",
            headers={**user.headers, "Idempotency-Key": key},
            json={"prompt": f"wool coat {key}", "settings": {"provider": "google-imagen"}},
            timeout=20,
        )

    answers = together(12, send)
    assert [r.status_code for r in answers] == [202] * 12, [r.text for r in answers]
    ids = {keys[i % 3]: set() for i in range(3)}
    for i, r in enumerate(answers):
        ids[keys[i % 3]].add(r.json()["id"])
    assert all(len(v) == 1 for v in ids.values()), ids
    with faults.app.extensions["bff"].db.session() as s:
        rows = s.execute(
            text("SELECT idempotency_key, count(*) FROM generations WHERE user_id = :u GROUP BY 1"),
            {"u": user.id},
        ).all()
    assert dict(rows) == dict.fromkeys(keys, 1)

    batch = Batch(user, {next(iter(v)): 1 for v in ids.values()})
    faults.assert_nothing_lost(batch, faults.wait_final(batch, timeout=30))


def test_concurrent_same_key_different_bodies_one_wins(faults: FaultStack):
    user = faults.user("idem-conflict")

    def send(i: int) -> requests.Response:
        return requests.post(
            f"{faults.base_url}/api/generate/from-prompt",
            headers={**user.headers, "Idempotency-Key": "shared"},
            json={"prompt": f"linen trousers, variant {i}", "settings": {"provider": "local"}},
            timeout=20,
        )

    answers = together(6, send)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 5, [r.text for r in answers]
    for r in answers:
        assert r.headers["Content-Type"].startswith("application/json")
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_conflict"
    [winner] = [r.json()["id"] for r in answers if r.status_code == 202]
    batch = Batch(user, {winner: 1})
    faults.assert_nothing_lost(batch, faults.wait_final(batch, timeout=30))
