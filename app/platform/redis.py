"""The process's Redis client: one per URL, from redis-py, shared by the rate
limiter, live events, metrics and maintenance. Its connection pool hands each
thread a connection and, after a fork, starts afresh in the child; idle
connections are checked before use (``health_check_interval``), so one Redis
closed meanwhile (a restart, its idle timeout) is replaced, not handed out."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=4)
def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10
    )
