"""The per-process cache of verified API keys: what it saves, and how long a
revocation made elsewhere takes to bite."""

from __future__ import annotations

import pytest
from sqlalchemy import event, update

from app.api import auth
from app.api.auth import KEY_CACHE_TTL, KeyCache, key_prefix
from app.domain.models import ApiKey, utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(auth, "key_cache", KeyCache(clock=c))
    return c


def _count_statements(app) -> list[str]:
    seen: list[str] = []
    event.listen(
        app.extensions["bff"].db.engine,
        "before_cursor_execute",
        lambda _c, _cur, stmt, *_a: seen.append(stmt),
    )
    return seen


def test_ttl_is_short():
    assert 0 < KEY_CACHE_TTL <= 10


def test_a_verified_key_is_not_looked_up_again(app, client, user, clock):
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    seen = _count_statements(app)
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    assert not [s for s in seen if "api_keys" in s]
    clock.now += KEY_CACHE_TTL + 0.1
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    assert [s for s in seen if "api_keys" in s]  # expired: verified again


def test_revocation_by_another_process_bites_within_the_ttl(app, client, user, clock):
    """Another process (e.g. ``bff users revoke`` elsewhere) cannot reach this
    process's cache: the key keeps working until its entry expires."""
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    with app.extensions["bff"].db.session() as session:  # not auth.revoke: no local forget
        session.execute(
            update(ApiKey).where(ApiKey.prefix == key_prefix(user.key)).values(revoked_at=utcnow())
        )
    clock.now += KEY_CACHE_TTL - 0.5
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    clock.now += 1.0
    assert client.get("/api/generate", headers=user.headers).status_code == 401


def test_revoke_in_this_process_bites_at_once(app, client, user, other_user, clock):
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    assert client.get("/api/generate", headers=other_user.headers).status_code == 200
    with app.extensions["bff"].db.session() as session:
        assert auth.revoke(session, key_prefix(user.key)) == 1
    assert client.get("/api/generate", headers=user.headers).status_code == 401
    assert client.get("/api/generate", headers=other_user.headers).status_code == 200


def test_a_key_sent_with_another_scheme_is_told_the_one_to_use(client, user):
    told = client.get("/api/generate", headers={"Authorization": f"Token {user.key}"})
    assert told.status_code == 401
    assert told.json["error"]["message"] == (
        "missing API key: send 'Authorization: Bearer <key>' (not 'Token')"
    )
    assert client.get("/api/generate").json["error"]["message"].endswith("Bearer <key>'")


@pytest.mark.parametrize("header", ["{key}", "Bearer:{key}", "Bearer={key}", "bearer-{key}"])
def test_a_key_sent_without_the_scheme_is_not_echoed(client, user, header):
    told = client.get("/api/generate", headers={"Authorization": header.format(key=user.key)})
    assert told.status_code == 401
    body = told.get_data(as_text=True)
    assert "bff_" not in body and user.key.split("_", 2)[2][:7] not in body, body
    assert told.json["error"]["message"].endswith("Bearer <key>'")


def test_failures_are_not_cached(app, client, user, clock):
    bad = {"Authorization": f"Bearer {user.key}x"}
    assert client.get("/api/generate", headers=bad).status_code == 401
    seen = _count_statements(app)
    assert client.get("/api/generate", headers=bad).status_code == 401
    assert [s for s in seen if "api_keys" in s]


def test_entries_are_scoped_to_one_database():
    cache = KeyCache(clock=Clock())
    cache.put("sqlite:///a.db", "d" * 64, 1, "bff_x")
    assert cache.get("sqlite:///a.db", "d" * 64) == 1
    assert cache.get("sqlite:///b.db", "d" * 64) is None


def test_the_cache_is_bounded():
    cache = KeyCache(max_entries=3, clock=Clock())
    for i in range(10):
        cache.put("db", f"{i:064d}", i, "bff_x")
    assert len(cache._entries) <= 3
    assert cache.get("db", f"{9:064d}") == 9


def test_an_expired_entry_sends_one_caller_to_the_database_at_a_time():
    """Under load every thread of a process met an expired entry at once and
    each asked the database; now the first does, and the others are answered
    from the entry while it does, for at most one more TTL."""
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.put("db", "d" * 64, 7, "bff_x")
    clock.now += KEY_CACHE_TTL
    assert cache.get("db", "d" * 64) is None  # the first: it verifies the key
    assert cache.get("db", "d" * 64) == 7  # the others, meanwhile
    assert cache.get("db", "d" * 64) == 7
    cache.put("db", "d" * 64, 7, "bff_x")  # verified
    clock.now += KEY_CACHE_TTL - 0.1
    assert cache.get("db", "d" * 64) == 7
    clock.now += 0.1
    assert cache.get("db", "d" * 64) is None  # expired again: one verifies
    assert cache.get("db", "d" * 64) == 7
    clock.now += KEY_CACHE_TTL  # that lookup never came back (its request failed)
    assert cache.get("db", "d" * 64) is None
    assert cache.get("db", "d" * 64) is None  # too old for anyone: each verifies


def test_a_key_that_fails_its_lookup_answers_nobody_from_its_entry():
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.put("db", "d" * 64, 7, "bff_x")
    clock.now += KEY_CACHE_TTL
    assert cache.get("db", "d" * 64) is None
    cache.forget("db", "d" * 64)
    assert cache.get("db", "d" * 64) is None
    assert cache.get("db", "d" * 64) is None


def test_revoked_elsewhere_while_a_lookup_runs(app, client, user, clock):
    """While one request verifies an expired key, the others are answered
    from its entry without a query; once the entry is a TTL past expiry,
    nobody is, and a revoked key gets 401 from every request."""
    assert client.get("/api/generate", headers=user.headers).status_code == 200
    with app.extensions["bff"].db.session() as session:
        session.execute(
            update(ApiKey).where(ApiKey.prefix == key_prefix(user.key)).values(revoked_at=utcnow())
        )
    clock.now += KEY_CACHE_TTL
    db_url = app.extensions["bff"].db.url
    assert auth.key_cache.get(db_url, auth.hash_key(user.key)) is None  # a request verifying it
    seen = _count_statements(app)
    assert client.get("/api/generate", headers=user.headers).status_code == 200  # meanwhile
    assert not [s for s in seen if "api_keys" in s]
    clock.now += KEY_CACHE_TTL  # that lookup never ended: the entry is too old to answer
    assert client.get("/api/generate", headers=user.headers).status_code == 401
    assert client.get("/api/generate", headers=user.headers).status_code == 401
    assert [s for s in seen if "api_keys" in s]
