"""The process's Redis client, one per URL. redis-py's pool gives each thread a
connection and starts afresh after a fork; idle connections are checked before
use, so one Redis closed meanwhile is replaced, not handed out."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=4)
def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10
    )
