"""Verifying Replicate's prediction webhooks (Standard Webhooks).

Replicate signs each delivery with the account's default webhook secret
(``GET /v1/webhooks/default/secret``): ``webhook-signature`` is ``v1,`` + the
base64 HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"``. The
``standardwebhooks`` package checks it, and refuses a timestamp more than
5 minutes off. The secret is fetched once per process and fetched again
(at most once a minute) when a signature does not match, in case it rotated.
The route needs no key, so anyone can make it fetch: one fetch at a time per
process, and a failed one is not tried again for ``RETRY_FAILED_AFTER``
seconds (the deliveries meanwhile are ``503``, which Replicate retries).

A ``webhook-id`` is acted on once: remembered for ``REPLAY_WINDOW`` seconds
in Redis (``SET NX``), or in this process without Redis (the embedded
default). A duplicate slipping through only wakes a stage twice, which the
runner makes harmless.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.platform import redis as redis_clients
from app.platform.config import Settings
from app.providers.base import ProviderError, ProviderTransient
from app.providers.replicate import PROBE_TIMEOUT, client_for, replicate_errors

log = logging.getLogger(__name__)

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
REPLAY_WINDOW = 600  # s: twice the timestamp tolerance, so an old copy is refused either way
REFETCH_EVERY = 60.0  # s: a flood of bad signatures costs Replicate one call a minute
RETRY_FAILED_AFTER = 10.0  # s: while Replicate is unreachable, a flood costs a call per 10 s
MISMATCH = "No matching signature found"


def webhook_secret(settings: Settings) -> str:
    """The account's default webhook signing secret (``whsec_…``)."""
    client = client_for(settings.replicate_api_token, settings.replicate_base_url, PROBE_TIMEOUT)
    with replicate_errors("webhook secret"):
        return client.webhooks.default.secret().key


class Refused(Exception):
    """Not a delivery from Replicate (or too old): answer 401."""


_lock = threading.Lock()
# (token, endpoint) -> (the secret's verifier, when it was fetched)
_verifiers: dict[tuple[str | None, str | None], tuple[Webhook, float]] = {}
_seen: dict[str, float] = {}  # webhook-id -> expiry, without Redis
_fetching = threading.Lock()  # one fetch of the secret at a time
_failed: dict[tuple[str | None, str | None], tuple[str, float]] = {}  # key -> (why, when)


def _verifier(settings: Settings, fresh: bool = False) -> Webhook | None:
    """The cached verifier; ``fresh`` fetches the secret again (None when that
    was done less than ``REFETCH_EVERY`` ago). Replicate's errors arrive
    mapped (``ProviderTransient``, ...)."""
    key = (settings.replicate_api_token, settings.replicate_base_url)
    with _lock:
        cached = _verifiers.get(key)
    if cached and (not fresh or time.monotonic() - cached[1] < REFETCH_EVERY):
        return None if fresh else cached[0]
    secret = _fetch(settings, key)
    try:
        verifier = Webhook(secret)
    except Exception:  # noqa: BLE001 - a secret Replicate sent that the package cannot read
        raise Refused("webhook refused: unusable signing secret") from None
    with _lock:
        _verifiers[key] = (verifier, time.monotonic())
    return verifier


def _fetch(settings: Settings, key: tuple[str | None, str | None]) -> str:
    """Replicate's secret; ``ProviderTransient`` (a 503) while a fetch is in
    flight or failed less than ``RETRY_FAILED_AFTER`` ago."""
    with _lock:
        why, when = _failed.get(key, ("", float("-inf")))
    if time.monotonic() - when < RETRY_FAILED_AFTER:
        raise ProviderTransient(why)
    if not _fetching.acquire(blocking=False):
        raise ProviderTransient("another request is fetching it")
    try:
        secret = webhook_secret(settings)  # ProviderError when Replicate is unreachable
    except ProviderError as exc:
        with _lock:
            _failed[key] = (str(exc), time.monotonic())
        raise
    finally:
        _fetching.release()
    with _lock:
        _failed.pop(key, None)
    return secret


def verify(settings: Settings, body: bytes, headers: dict[str, str]) -> None:
    """Raise ``Refused`` unless Replicate signed this body, recently. On a
    mismatch the secret is fetched again once (it may have rotated)."""
    if not settings.replicate_api_token:
        raise Refused("Replicate is not configured here: no secret to verify with")
    for fresh in (False, True):
        verifier = _verifier(settings, fresh)
        if verifier is None:  # fetched again too recently to try
            break
        try:
            verifier.verify(body, headers, json_parse=False)
            return
        except WebhookVerificationError as exc:
            if str(exc) != MISMATCH:
                raise Refused(f"webhook refused: {exc}") from None
    raise Refused(f"webhook refused: {MISMATCH}")


def first_delivery(settings: Settings, msg_id: str) -> bool:
    """True the first time ``msg_id`` is seen within the replay window."""
    if settings.redis_url:
        try:
            key = f"bff:replicate-webhook:{msg_id}"
            first = redis_clients.client(settings.redis_url).set(key, 1, nx=True, ex=REPLAY_WINDOW)
            return bool(first)
        except redis.RedisError as exc:  # acting twice is harmless; refusing would lose it
            log.warning("replay check skipped, Redis: %s", type(exc).__name__)
            return True
    now = time.monotonic()
    with _lock:
        for old in [k for k, expiry in _seen.items() if expiry < now]:
            del _seen[old]
        if msg_id in _seen:
            return False
        _seen[msg_id] = now + REPLAY_WINDOW
        return True


def forget(settings: Settings, msg_id: str) -> None:
    """Not acted on after all (the broker was down): let Replicate's retry in."""
    if settings.redis_url:
        try:
            redis_clients.client(settings.redis_url).delete(f"bff:replicate-webhook:{msg_id}")
        except redis.RedisError:
            pass
        return
    with _lock:
        _seen.pop(msg_id, None)
