"""Deleting generations at random moments across all stages, on PostgreSQL,
Redis and moto's S3: afterwards no object lacks a row, and every deleted
generation's URLs answer 404 (a stage that stores after the delete finds
its generation gone when it records, and removes what it stored)."""

from __future__ import annotations

import random
import time

import pytest
import requests

from tests.faults.stack import FaultStack
from tests.support import procs as P

pytestmark = pytest.mark.services


def test_twenty_deletes_at_random_moments_leave_nothing_behind(faults: FaultStack):
    faults.replicate.latency = 1.0
    user = faults.user("deleter")
    rng = random.Random(20)
    plan = [(rng.choice(["google-imagen", "local"]), rng.randint(1, 4)) for _ in range(20)]
    ids = {faults.submit(user, p, f"look {i}", count=n): n for i, (p, n) in enumerate(plan)}
    start = time.monotonic()
    for at, gen_id in sorted((rng.uniform(0, 4), g) for g in ids):  # every stage, some done
        time.sleep(max(0.0, start + at - time.monotonic()))
        resp = requests.delete(f"{faults.base_url}/api/generate/{gen_id}", headers=user.headers)
        assert resp.status_code == 204, resp.text

    prefix = f"users/{user.id}/generations/"

    def clean_for_a_while() -> bool:  # stages in flight store, then remove, what is theirs
        if any(k.startswith(prefix) for k in faults.bucket_keys()):
            return False
        time.sleep(3)
        return not any(k.startswith(prefix) for k in faults.bucket_keys())

    P.wait_for(clean_for_a_while, 45, "the stages in flight to clean up after the deletes")
    assert not faults.bucket_keys() - faults.recorded_keys()
    for gen_id, count in ids.items():
        got = requests.get(f"{faults.base_url}/api/generate/{gen_id}", headers=user.headers)
        assert got.status_code == 404
        for i in range(count):
            url = f"{faults.s3_endpoint}/{faults.bucket_name}/{prefix}{gen_id}/{i}.png"
            assert requests.get(url, timeout=5).status_code == 404, url
