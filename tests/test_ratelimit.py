"""The global token bucket: shared through Redis by separate clients (as
separate worker processes are), and the process-local fallback."""

from __future__ import annotations

import time

import fakeredis
import pytest

from app.platform import ratelimit
from app.platform.config import Settings
from app.platform.ratelimit import RESERVED, LocalBuckets, RedisBuckets, acquire
from app.providers.base import ProviderPending


def test_rate_limits_are_read_from_the_environment():
    s = Settings.from_env(
        {"BFF_RATE_LIMIT_GOOGLE_IMAGEN": "10/5", "BFF_RATE_LIMIT_OPENAI_DALLE3": "7"}
    )
    assert s.rate_limits["google-imagen"] == (10, 5.0)
    assert s.rate_limits["openai-dalle3"] == (7, 60.0)
    assert s.rate_limits["openai-gpt-image"] == (50, 60.0)
    assert Settings.from_env({}).rate_limits["google-imagen"] == (100, 60.0)


def test_a_rate_limit_of_zero_is_no_limit_and_a_bad_one_is_refused_by_name():
    s = Settings.from_env({"BFF_RATE_LIMIT_FLUX_PRO": "0"})
    assert "flux-pro" not in s.rate_limits and "google-imagen" in s.rate_limits
    for _ in range(3):  # no bucket, no Redis: every call goes ahead
        acquire(s, "flux-pro")
    for bad in ("10/0", "-1/60", "ten"):
        with pytest.raises(ValueError, match="BFF_RATE_LIMIT_FLUX_PRO"):
            Settings.from_env({"BFF_RATE_LIMIT_FLUX_PRO": bad})


def test_local_bucket_allows_capacity_then_reserves_tokens_in_turn():
    b = LocalBuckets()
    assert [b.take("p", 3, 3.0) for _ in range(3)] == [(0.0, True)] * 3
    waits = [b.take("p", 3, 3.0) for _ in range(3)]
    assert all(reserved for _, reserved in waits)
    # one token a second: each waiter gets the next one, not the same one
    assert [round(w) for w, _ in waits] == [1, 2, 3]
    assert b.take("other", 3, 3.0) == (0.0, True), "buckets are per provider"


def test_nothing_is_reserved_past_the_horizon(monkeypatch):
    monkeypatch.setattr(ratelimit, "RESERVE_AHEAD", 2.0)
    for b in (LocalBuckets(),):
        assert b.take("p", 1, 1.0) == (0.0, True)
        assert [round(b.take("p", 1, 1.0)[0]) for _ in range(2)] == [1, 2]
        wait, reserved = b.take("p", 1, 1.0)
        assert not reserved and 0.9 < wait <= 1.0  # when a third reservation fits


def test_redis_bucket_is_shared_by_separate_clients():
    server = fakeredis.FakeServer()  # two "processes", one Redis
    a, b = (RedisBuckets(fakeredis.FakeRedis(server=server)) for _ in range(2))
    taken = [c.take("google-imagen", 4, 60.0) for c in (a, b, a, b)]
    assert taken == [(0.0, True)] * 4
    (wait_a, ra), (wait_b, rb) = a.take("google-imagen", 4, 60.0), b.take("google-imagen", 4, 60.0)
    assert ra and rb
    # 4 per minute: one per 15 s, and the second waiter is a token behind the first
    assert 14 < wait_a <= 15 and 29 < wait_b <= 30


def test_redis_bucket_reserves_up_to_the_horizon(monkeypatch):
    monkeypatch.setattr(ratelimit, "RESERVE_AHEAD", 30.0)
    b = RedisBuckets(fakeredis.FakeRedis())
    started = time.monotonic()
    assert b.take("slow", 4, 60.0) == (0.0, True)
    b.client.hset("bff:ratelimit:slow", "tokens", "-0.5")  # half a token already reserved
    wait, reserved = b.take("slow", 4, 60.0)
    # (The bucket refills as the clock runs: a loaded machine takes a while between calls.)
    assert reserved and 22.5 - (time.monotonic() - started) - 0.01 < wait <= 22.5  # 1.5 tokens
    wait, reserved = b.take("slow", 4, 60.0)  # 2.5 tokens: past 30 s (2 tokens)
    # until a reservation within 30 s fits
    assert not reserved and 7.5 - (time.monotonic() - started) - 0.01 < wait <= 7.5
    assert b.client.pttl("bff:ratelimit:slow") > 60_000 + 30_000, "outlives its debt"


def test_redis_bucket_refills_over_time():

    b = RedisBuckets(fakeredis.FakeRedis())
    assert b.take("fast", 2, 0.2) == (0.0, True) and b.take("fast", 2, 0.2) == (0.0, True)
    wait, reserved = b.take("fast", 2, 0.2)
    assert reserved and 0 < wait <= 0.1
    time.sleep(0.25)  # the reserved token, then a free one
    assert b.take("fast", 2, 0.2) == (0.0, True)


def test_acquire_reserves_a_token_and_uses_it_later(redis_url, monkeypatch):
    s = Settings.from_env({"REDIS_URL": redis_url, "BFF_RATE_LIMIT_OPENAI_DALLE3": "1/60"})
    acquire(s, "openai-dalle3")
    with pytest.raises(ProviderPending) as exc:
        acquire(s, "openai-dalle3")
    assert exc.value.reason == "waiting for a openai-dalle3 rate-limit token"
    assert 59 < exc.value.retry_in <= 60  # reserved: its own time, no jitter
    due = exc.value.state[RESERVED]
    assert abs(due - (time.time() + exc.value.retry_in)) < 1
    # back early: wait the rest, keeping the reservation
    with pytest.raises(ProviderPending) as early:
        acquire(s, "openai-dalle3", due)
    assert early.value.state == {RESERVED: due} and 58 < early.value.retry_in <= 60
    # on time: the call goes ahead without taking another token
    monkeypatch.setattr(time, "time", lambda: due)
    acquire(s, "openai-dalle3", due)
    acquire(s, "local")  # no limit configured: never waits
    # too late: the reservation is dropped and the bucket asked again (which
    # has nothing free here, nor a reservation within its one-token horizon)
    monkeypatch.setattr(time, "time", lambda: due + ratelimit.LATE_OK + 1)
    with pytest.raises(ProviderPending) as late:
        acquire(s, "openai-dalle3", due)
    assert late.value.state == {} and late.value.retry_in > 0


def test_acquire_without_a_reservation_jitters_the_wait(redis_url, monkeypatch):
    monkeypatch.setattr(ratelimit, "RESERVE_AHEAD", 0.0)
    s = Settings.from_env({"REDIS_URL": redis_url, "BFF_RATE_LIMIT_OPENAI_DALLE3": "1/60"})
    acquire(s, "openai-dalle3")
    with pytest.raises(ProviderPending) as exc:
        acquire(s, "openai-dalle3")
    assert exc.value.state == {} and 59 < exc.value.retry_in <= 75
