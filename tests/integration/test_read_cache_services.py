"""The status read cache across real gunicorn workers (the Procfile's ``web``,
two processes): a generation deleted through one worker stops being served by
every worker, although each may hold it in its own cache."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.helpers import wait_final

pytestmark = pytest.mark.services


def _statuses(url: str, headers: dict[str, str], n: int = 48) -> list[int]:
    """``n`` GETs, 16 at a time, each on a fresh connection, so both workers answer."""

    def one(_: int) -> int:
        return requests.get(url, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def test_a_deletion_reaches_every_worker(stack):
    user = stack.user("read-cache")
    resp = requests.post(
        f"{stack.base_url}/api/generate/from-prompt",
        headers=user.headers,
        json={"prompt": "ivory linen shirt"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    gen_id = resp.json()["id"]
    assert wait_final(stack.base_url, user.headers, gen_id)["status"] == "completed"
    url = f"{stack.base_url}/api/generate/{gen_id}"
    assert set(_statuses(url, user.headers)) == {200}  # every worker has read (and kept) it
    other = stack.user("read-cache-other")
    assert set(_statuses(url, other.headers, 16)) == {404}  # a hit checks the owner

    assert requests.delete(url, headers=user.headers, timeout=10).status_code == 204
    # Pub/sub reaches the other worker in well under a millisecond; allow for a
    # loaded machine, but far less than the cache's 60 s TTL.
    deadline = time.monotonic() + 2.0
    while set(seen := _statuses(url, user.headers)) != {404}:
        assert time.monotonic() < deadline, f"a worker still serves the deleted generation: {seen}"
