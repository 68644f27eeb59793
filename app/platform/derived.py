"""Settings derived from several environment variables at once, and the
one error every bad setting raises: which storage backend (and bucket
endpoint), and each rate-limited model's limit. ``config.Settings.from_env``
calls these; nothing else reads the environment."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

R2_VARS = ("R2_ENDPOINT_URL", "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY")


class ConfigError(ValueError):
    """The environment cannot be run as it is; the message says what to set."""


# scheme://user:password@ -> scheme://user:***@ (SQLAlchemy's hide_password
# spelling), each URL of a text (or of ``;``-separated failover URLs). The
# password runs to the last "@" of the host part: the URL parsers (redis-py,
# kombu) take "p@ss" from redis://:p@ss@host.
_PASSWORD = re.compile(
    r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]*(?:@[^\s@/?#;]*(?=@))*@", re.IGNORECASE
)
# ?password=… (redis-py's form for unix:// sockets, psycopg's too) and a
# conninfo's password=…
_PASSWORD_PARAM = re.compile(r"(\bpassword=)[^\s&;#'\"]*", re.IGNORECASE)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it masked: a database,
    broker or bucket URL in a log line or an error must not leak it."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", text))


def shown(raw: str) -> str:
    """A setting's value as a refusal prints it (every process says it at
    start, into its log): quoted, a URL's password masked."""
    return repr(hide_passwords(raw))


def parse_var(var: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except (ValueError, OSError) as exc:  # OSError: a file setting names no file
        raise ConfigError(f"{var}={shown(raw)} cannot be used: {exc}") from None


# The databases the code runs on, by the drivers it installs (SQLAlchemy's names).
DATABASE_DRIVERS = ("postgresql+psycopg", "sqlite", "sqlite+pysqlite")


def sqlalchemy_url(raw: str) -> str:
    """DATABASE_URL for SQLAlchemy: Heroku-style ``postgres://`` and plain
    ``postgresql://`` name psycopg 3 (the driver installed). Any other driver
    (``postgresql+psycopg2://``, ``mysql://``) or no URL at all is one line here,
    not a traceback in every process; the line never shows the password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            raw = "postgresql+psycopg://" + raw[len(prefix) :]
    try:
        driver = make_url(raw).drivername
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        raise ConfigError("DATABASE_URL is not a database URL") from None
    if driver not in DATABASE_DRIVERS:
        raise ConfigError(
            f"DATABASE_URL names {driver}://, which cannot be used: it must be "
            "postgresql+psycopg:// (postgres:// and postgresql:// mean it too) or sqlite:///"
        )
    return raw


def storage(env: Mapping[str, str]) -> tuple[str, str | None]:
    """The storage backend and the bucket's endpoint. Without STORAGE_BACKEND,
    a configured bucket (R2_BUCKET_NAME) is used: the seed's ``.env`` sets
    only the R2_* variables, and images silently on local disk would be a
    surprise. Cloudflare's R2_ACCOUNT_ID gives the endpoint."""
    endpoint = env.get("R2_ENDPOINT_URL") or None
    if not endpoint and env.get("R2_ACCOUNT_ID"):
        endpoint = f"https://{env['R2_ACCOUNT_ID']}.r2.cloudflarestorage.com"
    backend = (env.get("STORAGE_BACKEND") or "").lower()
    if not backend:
        if env.get("R2_BUCKET_NAME"):
            backend = "s3"
        elif partial := [v for v in R2_VARS if env.get(v)]:
            raise ConfigError(
                f"{', '.join(partial)} set but R2_BUCKET_NAME is not: set it to store images "
                "in the bucket, or STORAGE_BACKEND=local to keep them on local disk"
            )
        else:
            backend = "local"
    if backend == "s3":
        missing = [v for v in ("R2_BUCKET_NAME", "R2_CDN_URL") if not env.get(v)]
        if missing:
            raise ConfigError(f"the bucket (STORAGE_BACKEND=s3) needs {' and '.join(missing)}")
    elif backend != "local":
        raise ConfigError(f"STORAGE_BACKEND={backend} is not one of s3, local")
    return backend, endpoint


def provider_rate_limits(
    env: Mapping[str, str], default_provider: str | None
) -> dict[str, tuple[int, float]]:
    """Each catalogue bucket's limit: BFF_RATE_LIMIT_<BUCKET>, else the
    entry's; a bucket at 0 has none (as BFF_SUBMIT_RATE_LIMIT)."""
    # (Imported here: the catalogue's package imports the settings.)
    from app.providers.catalog import rate_limit_defaults

    _known_names(env, default_provider)
    limits = {}
    for bucket, default in rate_limit_defaults().items():
        var = rate_var(bucket)
        count, per = parse_var(var, env.get(var) or default, rate_pair)
        if count < 0 or per <= 0:
            raise ConfigError(f"{var} must be N/SECONDS, N >= 0 (0: no limit), SECONDS > 0")
        if count:
            limits[bucket] = (count, per)
    return limits


def _known_names(env: Mapping[str, str], default_provider: str | None) -> None:
    """Settings that name a model or a rate-limit bucket name one there is
    (a typo would send jobs elsewhere, or leave a limit unset, silently)."""
    from app.providers.catalog import CATALOGUE, rate_limit_defaults  # (it imports us)

    if default_provider and default_provider not in {"auto", *CATALOGUE}:
        models = ", ".join(sorted(CATALOGUE))
        raise ConfigError(f"BFF_DEFAULT_PROVIDER={default_provider!r} is not a model: {models}")
    buckets = {rate_var(b) for b in rate_limit_defaults()}
    for var in sorted(v for v in env if v.startswith("BFF_RATE_LIMIT_") and v not in buckets):
        raise ConfigError(f"{var} names no rate-limited model: one of {', '.join(sorted(buckets))}")


def prices_file(raw: str) -> str:
    """BFF_PRICES_FILE, checked to be a price table (a ValueError or OSError
    saying why not)."""
    from app.providers import pricing  # (its package imports the settings)

    return pricing.checked(raw)


def switch(raw: str) -> bool:
    """An on/off setting: a word that is neither (``enabled``, ``2``) is
    refused, not taken silently for off."""
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("it must be one of 1, true, yes, on (or 0, false, no, off)")


def rate_var(bucket: str) -> str:
    """The variable that sets a rate-limit bucket's limit: BFF_RATE_LIMIT_<BUCKET>."""
    return "BFF_RATE_LIMIT_" + bucket.upper().replace("-", "_")


def rate_pair(raw: str) -> tuple[int, float]:
    """``"100/60"`` (100 per 60 s) or ``"100"`` (per minute)."""
    count, _, per = raw.partition("/")
    return int(count), float(per or 60)
