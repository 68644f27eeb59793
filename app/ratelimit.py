"""Global per-provider rate limits: a token bucket shared by every worker
process through Redis, so N generator processes together never exceed a
provider's quota (Celery's ``rate_limit`` is per worker and would not).

One bucket per provider (``bff:ratelimit:<provider>``), ``capacity`` tokens
refilled at ``capacity / per`` tokens a second (``BFF_RATE_LIMIT_<ID>=100/60``).
Taking a token is one Lua script, atomic in Redis, timed by Redis's own clock
(``TIME``) so workers on different machines agree. No token free: the caller
is told how long until one is, and the stage waits (``StageWaiting``) instead
of failing or holding the worker.

Without ``REDIS_URL`` (the embedded default: one machine, a few processes)
the bucket is process-local: correct for one worker process, N times too
generous for N. Logged once at first use.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from functools import lru_cache

from .config import Settings
from .providers.base import ProviderPending, ProviderTransient

log = logging.getLogger(__name__)

TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or capacity
local ts = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every process using the same server and db."""

    shared = True

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.script = self.client.register_script(TAKE)

    def take(self, name: str, capacity: int, per: float) -> float:
        import redis

        try:
            raw = self.script(keys=[f"bff:ratelimit:{name}"], args=[capacity, capacity / per])
        except redis.RedisError as exc:
            raise ProviderTransient(f"rate limiter unavailable: {type(exc).__name__}") from exc
        return float(raw)


class LocalBuckets:
    """The same algorithm in this process only (no Redis configured)."""

    shared = False

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, capacity: int, per: float) -> float:
        rate = capacity / per
        with self.lock:
            now = time.monotonic()
            tokens, ts = self.buckets.get(name, (float(capacity), now))
            tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            self.buckets[name] = (tokens, now)
        return wait


@lru_cache(maxsize=8)
def _buckets(redis_url: str | None) -> RedisBuckets | LocalBuckets:
    if redis_url:
        return RedisBuckets(redis_url)
    log.warning("no REDIS_URL: provider rate limits are per process, not global")
    return LocalBuckets()


def buckets_for(settings: Settings) -> RedisBuckets | LocalBuckets:
    return _buckets(settings.redis_url)


def acquire(settings: Settings, provider_id: str) -> None:
    """Take one token for ``provider_id`` or raise ``ProviderPending`` saying how
    long until one is free. Providers without a configured limit are unlimited."""
    limit = settings.rate_limits.get(provider_id)
    if limit is None:
        return
    capacity, per = limit
    wait = buckets_for(settings).take(provider_id, capacity, per)
    if wait > 0:  # jitter: waiters that all woke at once would collide again
        raise ProviderPending(
            wait * random.uniform(1.0, 1.25), f"waiting for a {provider_id} rate-limit token"
        )
