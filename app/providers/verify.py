"""Whether each provider's key works, checked with a free call (Replicate's
account endpoint, OpenAI's model list): ``bff providers check`` asks now;
``/health`` shows an answer at most ``TTL`` seconds old per process, so a
health probe does not call the providers each time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.platform.config import Settings
from app.providers.base import ProviderRejected, ProviderTransient
from app.providers.registry import PROVIDERS, verify_key

TTL = 600.0


@dataclass(frozen=True)
class KeyCheck:
    configured: bool
    verified: bool | None  # None: nothing to verify, or the provider could not be asked
    detail: str


def check(provider_id: str, settings: Settings) -> KeyCheck:
    entry = PROVIDERS[provider_id]
    if entry.key_env_var is None:
        return KeyCheck(True, None, "needs no key")
    if not settings.key_for(entry.key_env_var):
        return KeyCheck(False, None, f"{entry.key_env_var} not configured")
    try:
        return KeyCheck(True, True, f"{entry.key_env_var} {verify_key(provider_id, settings)}")
    except ProviderRejected as exc:
        return KeyCheck(True, False, str(exc))
    except ProviderTransient as exc:
        return KeyCheck(True, None, f"could not check: {exc}")


def _account(provider_id: str, settings: Settings) -> tuple[str, str | None]:
    """Whose key a check asks about: every Replicate model asks the same
    account endpoint with the same token, so one check serves them all."""
    entry = PROVIDERS[provider_id]
    who = "replicate" if entry.api.startswith("replicate") else provider_id
    return who, settings.key_for(entry.key_env_var)


def check_all(settings: Settings) -> dict[str, KeyCheck]:
    """``check`` of every provider, each account asked once."""
    asked: dict[tuple[str, str | None], KeyCheck] = {}
    for pid in PROVIDERS:
        account = _account(pid, settings)
        if account not in asked:
            asked[account] = check(pid, settings)
    return {pid: asked[_account(pid, settings)] for pid in PROVIDERS}


_recent: dict[tuple[str, str | None], tuple[float, KeyCheck]] = {}  # key -> (expiry, check)


def recent(provider_id: str, settings: Settings) -> KeyCheck:
    """``check``, answered from this process's last one for up to ``TTL`` s,
    for ``/health``."""
    entry = PROVIDERS[provider_id]
    key = _account(provider_id, settings)
    hit = _recent.get(key)
    if hit is not None and time.monotonic() < hit[0]:
        return hit[1]
    result = check(provider_id, settings)
    # /health answers anyone: no account names, nor the provider's words on a
    # refused key (they quote the key's last characters); the CLI says those.
    if result.verified:
        result = KeyCheck(True, True, f"{entry.key_env_var} works")
    elif result.verified is False:
        result = KeyCheck(True, False, f"{entry.key_env_var} refused: bff providers check says why")
    _recent[key] = (time.monotonic() + TTL, result)
    return result
