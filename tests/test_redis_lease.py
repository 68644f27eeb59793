"""The test sessions' Redis db lease (tests/support/services.py)."""

from __future__ import annotations

import redis

from tests.support.services import (
    REDIS_HOST,
    REDIS_PORT,
    redis_db_number,
    redis_ok,
    release_redis_db,
    unavailable,
)


def test_a_db_someone_is_still_connected_to_is_never_leased():
    """A killed run's workers outlive its lease: a session leasing their db
    would see its stages taken by them and its generations stall."""
    if not redis_ok():
        unavailable("Redis on 127.0.0.1:6379")
    first = redis_db_number()
    release_redis_db(first)  # free again, but an orphan still listens there:
    orphan = redis.Redis(REDIS_HOST, REDIS_PORT, db=first)
    orphan.ping()
    try:
        leased = redis_db_number()
        release_redis_db(leased)
    finally:
        orphan.close()
    assert leased != first
