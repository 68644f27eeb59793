"""What a setting may be, for the one table of them (``config.ALLOWED``): a
test of the parsed value and the words completing "it must be …", so every
refusal is one line naming the variable, its value and what is allowed.
A value outside its range would start every process and then break it
(PostgreSQL refusing every connection, every upload answered 413)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from kombu.transport import TRANSPORT_ALIASES, resolve_transport


@dataclass(frozen=True)
class Allowed:
    test: Callable[[Any], bool]
    says: str  # completes "it must be ..."


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def number(low: float, high: float = math.inf, *, above: bool = False) -> Allowed:
    """From ``low`` (more than it when ``above``) to ``high``. Never NaN or
    infinite: NaN passes no comparison but ``>``'s negation, and infinite
    seconds overflow the date arithmetic."""

    def test(v: float) -> bool:
        return math.isfinite(v) and (v > low if above else v >= low) and v <= high

    says = f"more than {_num(low)}" if above else f"at least {_num(low)}"
    if high != math.inf:
        says = f"{says} and at most {_num(high)}" if above else f"from {_num(low)} to {_num(high)}"
    return Allowed(test, says)


def one_of(*words: str) -> Allowed:
    return Allowed(lambda v: v in words, f"one of {', '.join(words)}")


def _split(url: Any) -> SplitResult | None:
    """The URL's parts, or None when it is none (a bad port or IPv6 host, blanks)."""
    if not isinstance(url, str) or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts


def _http_url(url: Any) -> bool:
    # No query or fragment: paths are appended to it (BFF_PUBLIC_URL + "/cdn/…").
    parts = _split(url)
    return bool(
        parts
        and parts.scheme in ("http", "https")
        and parts.hostname
        and not parts.query
        and not parts.fragment
    )


def _redis_url(url: Any) -> bool:
    parts = _split(url)  # the schemes redis-py's Redis.from_url takes
    return bool(parts and parts.scheme in ("redis", "rediss", "unix"))


def _broker_url(url: Any) -> bool:
    """Each URL (``;`` separates failover URLs) names a transport kombu has,
    by its scheme or, as kombu reads ``sqla+postgresql://``, the part before
    ``+``. Only alias names: kombu imports any dotted name it is given."""
    if not isinstance(url, str):
        return False
    for part in url.split(";"):
        scheme, sep, _ = part.strip().partition("://")
        name = scheme.split("+", 1)[0] if "+" in scheme else scheme.lower()
        if not sep or name not in TRANSPORT_ALIASES:
            return False
        try:
            resolve_transport(name)
        except Exception:  # noqa: BLE001 - its library missing (kafka's raise NameError)
            return False
    return True


POSITIVE = number(0, above=True)
COUNT = number(1)
RATE = Allowed(
    lambda r: number(0).test(r[0]) and POSITIVE.test(r[1]),
    "N/SECONDS with N at least 0 (0: off) and SECONDS more than 0",
)
HTTP_URL = Allowed(_http_url, "an absolute http:// or https:// URL without query or fragment")
REDIS = Allowed(_redis_url, "a redis://, rediss:// or unix:// URL")
BROKER = Allowed(
    _broker_url, "a URL whose scheme is a transport kombu knows (redis://, rediss://, amqp://, …)"
)
BROKER_TOO = Allowed(  # REDIS_URL when no CELERY_BROKER_URL is set
    _broker_url, "redis:// or rediss:// to be the broker too (else set CELERY_BROKER_URL)"
)
