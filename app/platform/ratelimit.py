"""Global per-provider rate limits: a token bucket per provider shared by
every worker process through Redis (Celery's ``rate_limit`` is per worker),
``capacity`` tokens refilled over ``per`` seconds (``BFF_RATE_LIMIT_<ID>=100/60``).
Taking a token is one Lua script, atomic and timed by Redis's clock.

No token free: the caller *reserves* the next one (the balance goes below
zero, up to ``RESERVE_AHEAD`` seconds of tokens) and is told when it is due;
the stage waits without holding the worker and uses its reservation when it
runs again. Waiters get times one token apart, so a burst is served in order
at the limit's pace instead of stampeding. A reservation never used is a token
lost, never one too many. Due times are ``time.time()``: workers' clocks must
agree (NTP) to well under a token's interval.

Without ``REDIS_URL`` (the embedded default) the bucket is per process.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from functools import lru_cache

import redis

from app.platform.config import Settings
from app.platform.redis import client
from app.providers.base import ProviderPending, ProviderTransient

log = logging.getLogger(__name__)

# How far ahead a token may be reserved, in seconds of the limit's pace.
RESERVE_AHEAD = 60.0
# Where a waiting job keeps its reservation (``time.time()`` it is due at).
RESERVED = "rateLimitTokenAt"
# A run this early for its reservation (timer granularity) may use it.
EARLY_OK = 0.005
# A reservation used this long after it was due is dropped and a token taken
# again: the bucket may have refilled meanwhile, and late holders calling on
# top of a full bucket would exceed the limit.
LATE_OK = 5.0

TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local ahead = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or capacity
local ts = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait, reserved = 0, 1
if tokens - 1 >= -ahead * rate then
  tokens = tokens - 1
  if tokens < 0 then wait = -tokens / rate end
else
  reserved = 0
  wait = (1 - tokens - ahead * rate) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
-- until a full bucket again (debts included): expiring earlier would forgive them
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity / rate + ahead) * 1000) + 1000)
return string.format('%.6f %d', wait, reserved)
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every process using the same server and db."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self.client = redis_client
        self.script = redis_client.register_script(TAKE)

    def take(self, name: str, capacity: int, per: float) -> tuple[float, bool]:
        """(seconds until the token is due, whether it is reserved): (0, True)
        is a token now; (w, False) means none could be reserved, ask in w s."""
        try:
            raw = self.script(
                keys=[f"bff:ratelimit:{name}"], args=[capacity, capacity / per, RESERVE_AHEAD]
            )
        except redis.RedisError as exc:
            raise ProviderTransient(f"rate limiter unavailable: {type(exc).__name__}") from exc
        wait, reserved = raw.split()
        return float(wait), reserved == b"1"


class LocalBuckets:
    """The same algorithm in this process only (no Redis configured)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, capacity: int, per: float) -> tuple[float, bool]:
        rate = capacity / per
        with self.lock:
            now = time.monotonic()
            tokens, ts = self.buckets.get(name, (float(capacity), now))
            tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
            wait, reserved = 0.0, True
            if tokens - 1 >= -RESERVE_AHEAD * rate:
                tokens -= 1
                wait = max(0.0, -tokens / rate)
            else:
                reserved = False
                wait = (1 - tokens - RESERVE_AHEAD * rate) / rate
            self.buckets[name] = (tokens, now)
        return wait, reserved


@lru_cache(maxsize=8)
def buckets_for(redis_url: str | None) -> RedisBuckets | LocalBuckets:
    if redis_url:
        return RedisBuckets(client(redis_url))
    log.warning("no REDIS_URL: provider rate limits are per process, not global")
    return LocalBuckets()


def acquire(settings: Settings, bucket: str, reserved_at: float | None = None) -> None:
    """Take one token for ``bucket``, or use the one reserved for
    ``reserved_at`` (``time.time()``, saved from an earlier ``ProviderPending``).
    Returns when the call may go ahead; else raises ``ProviderPending`` saying
    how long to wait, its ``state`` holding the reservation to save and pass
    back. Providers without a configured limit are unlimited."""
    reason = f"waiting for a {bucket} rate-limit token"
    if reserved_at is not None:
        early = reserved_at - time.time()
        if early > EARLY_OK:
            raise ProviderPending(early, reason, {RESERVED: reserved_at})
        if early >= -LATE_OK:
            return
    limit = settings.rate_limits.get(bucket)
    if limit is None:
        return
    capacity, per = limit
    wait, reserved = buckets_for(settings.redis_url).take(bucket, capacity, per)
    if wait <= 0:
        return
    if reserved:  # its own time, one token after the waiter before it: no jitter
        raise ProviderPending(wait, reason, {RESERVED: time.time() + wait})
    # Nothing reserved: waiters that all woke at once would collide again.
    raise ProviderPending(wait * random.uniform(1.0, 1.25), reason)
