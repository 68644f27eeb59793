"""The global token bucket: shared through Redis by separate clients (as
separate worker processes are), and the process-local fallback."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.providers.base import ProviderPending
from app.ratelimit import LocalBuckets, RedisBuckets, acquire


def test_rate_limits_are_read_from_the_environment():
    s = Settings.from_env(
        {"BFF_RATE_LIMIT_GOOGLE_IMAGEN": "10/5", "BFF_RATE_LIMIT_OPENAI_DALLE3": "7"}
    )
    assert s.rate_limits["google-imagen"] == (10, 5.0)
    assert s.rate_limits["openai-dalle3"] == (7, 60.0)
    assert s.rate_limits["openai-gpt-image"] == (50, 60.0)
    assert Settings.from_env({}).rate_limits["google-imagen"] == (100, 60.0)


def test_local_bucket_allows_capacity_then_says_how_long_to_wait():
    b = LocalBuckets()
    assert [b.take("p", 3, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("p", 3, 3.0)
    assert 0.9 < wait <= 1.0  # one token a second
    assert b.take("other", 3, 3.0) == 0.0, "buckets are per provider"


def test_redis_bucket_is_shared_by_separate_clients(redis_url):
    a, b = RedisBuckets(redis_url), RedisBuckets(redis_url)  # two "processes"
    taken = [c.take("google-imagen", 4, 60.0) for c in (a, b, a, b)]
    assert taken == [0.0] * 4
    wait_a, wait_b = a.take("google-imagen", 4, 60.0), b.take("google-imagen", 4, 60.0)
    assert 14 < wait_a <= 15 and 14 < wait_b <= 15  # 4 per minute: one per 15 s


def test_redis_bucket_refills_over_time(redis_url):
    import time

    b = RedisBuckets(redis_url)
    assert b.take("fast", 2, 0.2) == 0.0 and b.take("fast", 2, 0.2) == 0.0
    assert b.take("fast", 2, 0.2) > 0
    time.sleep(0.15)
    assert b.take("fast", 2, 0.2) == 0.0


def test_acquire_raises_pending_naming_the_provider(redis_url):
    s = Settings.from_env({"REDIS_URL": redis_url, "BFF_RATE_LIMIT_OPENAI_DALLE3": "1/60"})
    acquire(s, "openai-dalle3")
    with pytest.raises(ProviderPending) as exc:
        acquire(s, "openai-dalle3")
    assert exc.value.reason == "waiting for a openai-dalle3 rate-limit token"
    assert 59 < exc.value.retry_in <= 75
    acquire(s, "local")  # no limit configured: never waits
