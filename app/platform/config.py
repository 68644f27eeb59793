"""Settings from the environment, in one place.

Every variable in ARCHITECTURE.md's contract table is read here and nowhere
else (those that make one setting together, through ``derived``), but for
Flower's ``FLOWER_*`` (``flowerconfig.py``, ``workers.flower``) and gunicorn's
``BFF_LOG_FORMAT`` (``gunicorn_logs``: its loggers are set up before the app). Unset (or
empty) means the embedded default: SQLite and a filesystem broker under
``./var/``, local-disk storage served at ``/cdn/``, the offline ``local``
provider. ``create_app(config)`` lays a dict of the same names over the
environment, so tests configure the app exactly as an operator would.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.platform.checks import (
    BROKER,
    BROKER_TOO,
    COUNT,
    HTTP_URL,
    POSITIVE,
    RATE,
    REDIS,
    Allowed,
    number,
    one_of,
)
from app.platform.derived import (
    ConfigError,
    parse_var,
    prices_file,
    provider_rate_limits,
    rate_pair,
    shown,
    sqlalchemy_url,
    storage,
    switch,
)

__all__ = ["ConfigError", "Settings"]


def _local(url: str) -> bool:
    """A URL only this machine can reach: loopback, unspecified or *.localhost."""
    host = urlsplit(url).hostname or ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
    addr = getattr(addr, "ipv4_mapped", None) or addr  # ::ffff:127.0.0.1 is 127.0.0.1
    return addr.is_loopback or addr.is_unspecified


# The provider keys a catalogue entry may name (``key_env_var``), each a setting.
KEY_VARS = ("REPLICATE_API_TOKEN", "OPENAI_API_KEY")


def _env(var: str, default: Any = None, parse: Callable[[str], Any] = str, **kw: Any) -> Any:
    """A setting read from ``var``, parsed by ``parse``; ``default`` when unset."""
    return field(default=default, metadata={"env": var, "parse": parse}, **kw)


# What each variable may be (app/platform/checks.py); any other value stops
# every process at start with one line. Where 0 is allowed it means "off".
ALLOWED: dict[str, Allowed] = {
    "PORT": number(1, 65535),
    "BFF_PUBLIC_URL": HTTP_URL,
    "R2_ENDPOINT_URL": HTTP_URL,
    "R2_CDN_URL": HTTP_URL,
    "REPLICATE_BASE_URL": HTTP_URL,
    "OPENAI_BASE_URL": HTTP_URL,
    "REDIS_URL": REDIS,
    "CELERY_BROKER_URL": BROKER,
    "BFF_STAGE_MAX_ATTEMPTS": COUNT,
    # A stall timeout of 0 takes every stage for lost; an interval of 0
    # floods the broker with beats.
    "BFF_STALL_TIMEOUT": POSITIVE,
    "BFF_GENERATION_TIMEOUT": POSITIVE,
    "BFF_MAINTENANCE_INTERVAL": POSITIVE,
    "BFF_SUBMIT_RATE_LIMIT": RATE,
    "BFF_MAX_UPLOAD_BYTES": COUNT,
    "BFF_MAX_IMAGE_PIXELS": COUNT,
    "BFF_LOCAL_RENDER_SCALE": POSITIVE,
    "BFF_LLM_TIMEOUT": POSITIVE,
    "BFF_CIRCUIT_WINDOW_S": COUNT,
    "BFF_CIRCUIT_MIN_SAMPLES": number(0),
    "BFF_CIRCUIT_FAILURE_RATE": number(0, 1),  # 1: the circuit never opens
    "BFF_PROVIDER_POLL_SECONDS": POSITIVE,
    "BFF_BROKER_VISIBILITY_TIMEOUT": COUNT,
    "BFF_SSE_HEARTBEAT": POSITIVE,
    "BFF_SSE_POLL": POSITIVE,
    "BFF_SSE_MAX_STREAMS": COUNT,
    "BFF_WEBHOOK_RETRY_BASE": POSITIVE,
    "BFF_WEBHOOK_MAX_AGE": POSITIVE,
    # Sent as whole milliseconds: under 1 ms is 0, PostgreSQL's "no limit";
    # past its int range it refuses every connection.
    "BFF_DB_STATEMENT_TIMEOUT": number(0.001, 2_147_483),
    "BFF_LOG_LEVEL": one_of(*logging.getLevelNamesMapping()),  # WARN and FATAL too
    "BFF_LOG_FORMAT": one_of("text", "json"),
    "BFF_REPLICATE_WEBHOOKS": one_of("auto", "on", "off"),
}


def _setting(
    var: str, raw: str, parse: Callable[[str], Any] = str, allowed: Allowed | None = None
) -> Any:
    """``raw`` parsed; a ConfigError naming ``var`` if it cannot be, or is not
    allowed (``allowed``, else its row in ALLOWED)."""
    value = parse_var(var, raw, parse)
    allowed = allowed or ALLOWED.get(var)
    if allowed and not allowed.test(value):
        raise ConfigError(f"{var}={shown(raw)} cannot be used: it must be {allowed.says}")
    return value


def _parsed(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Each set variable's value, parsed and checked."""
    values = {}
    for f in fields(cls):
        var = f.metadata.get("env") if f.metadata else None
        if var and env.get(var):
            values[f.name] = _setting(var, env[var], f.metadata["parse"])
    return values


def _default_var_dir() -> Path:
    """The checkout's ``var/`` when running from one (``make dev``, ``bff``
    from any directory find the same embedded database), else ``./var``."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout / "var" if (checkout / "pyproject.toml").exists() else Path("var")


@dataclass(frozen=True)
class Settings:
    # Derived in from_env from several variables.
    var_dir: Path
    # Secrets (and URLs that may hold a password) stay out of repr(settings):
    # a traceback or a debug line that shows the settings shows no key.
    database_url: str = field(repr=False)
    redis_url: str | None = field(repr=False)
    broker_url: str = field(repr=False)
    storage_backend: str
    media_root: Path
    public_url: str
    port: int
    r2_endpoint_url: str | None
    # Global provider rate limits, id -> (requests, per seconds); shared via Redis.
    rate_limits: dict[str, tuple[int, float]]

    # One variable each.
    r2_access_key_id: str | None = _env("R2_ACCESS_KEY_ID")
    r2_secret_access_key: str | None = _env("R2_SECRET_ACCESS_KEY", repr=False)
    r2_bucket_name: str | None = _env("R2_BUCKET_NAME")
    r2_cdn_url: str | None = _env("R2_CDN_URL", parse=lambda v: v.rstrip("/") or None)
    r2_region: str = _env("R2_REGION", "auto")
    replicate_api_token: str | None = _env("REPLICATE_API_TOKEN", repr=False)
    openai_api_key: str | None = _env("OPENAI_API_KEY", repr=False)
    replicate_base_url: str | None = _env("REPLICATE_BASE_URL")
    openai_base_url: str | None = _env("OPENAI_BASE_URL")
    default_provider: str | None = _env("BFF_DEFAULT_PROVIDER")
    stage_max_attempts: int = _env("BFF_STAGE_MAX_ATTEMPTS", 3, int)
    # A generation whose lease (updated_at) is older than this is presumed
    # lost and re-dispatched. A running stage renews it every third of it, so
    # it bounds recovery, not how long a stage may take.
    stall_timeout: float = _env("BFF_STALL_TIMEOUT", 30.0, float)
    # Not final this long after its submit (or retry): fails with code "timeout".
    generation_timeout: float = _env("BFF_GENERATION_TIMEOUT", 900.0, float)
    maintenance_interval: float = _env("BFF_MAINTENANCE_INTERVAL", 10.0, float)
    # (count, window seconds); 0 = off
    submit_rate_limit: tuple[int, float] = _env("BFF_SUBMIT_RATE_LIMIT", (100, 60.0), rate_pair)
    max_upload_bytes: int = _env("BFF_MAX_UPLOAD_BYTES", 10 * 1024 * 1024, int)
    max_image_pixels: int = _env("BFF_MAX_IMAGE_PIXELS", 40_000_000, int)
    local_render_scale: float = _env("BFF_LOCAL_RENDER_SCALE", 1.0, float)
    log_level: str = _env("BFF_LOG_LEVEL", "INFO", str.upper)
    log_format: str = _env("BFF_LOG_FORMAT", "text", str.lower)  # text | json
    # The LLM behind analyze (vision) and enhance, used when OPENAI_API_KEY is set.
    llm_model: str = _env("BFF_LLM_MODEL", "gpt-4o-mini")
    llm_timeout_s: float = _env("BFF_LLM_TIMEOUT", 30.0, float)
    # Routing skips a provider whose failure rate over the last window (with
    # at least min_samples outcomes) exceeds the rate.
    circuit_window_s: int = _env("BFF_CIRCUIT_WINDOW_S", 300, int)
    circuit_min_samples: int = _env("BFF_CIRCUIT_MIN_SAMPLES", 5, int)
    circuit_failure_rate: float = _env("BFF_CIRCUIT_FAILURE_RATE", 0.5, float)
    # Seconds between looks at a running prediction (a countdown; no run
    # sleeps); unset: 2, or 10 while Replicate webhooks wake the stage.
    provider_poll_override: float | None = _env("BFF_PROVIDER_POLL_SECONDS", None, float)
    # auto | on | off: Replicate webhooks (see replicate_webhook_url).
    replicate_webhooks: str = _env("BFF_REPLICATE_WEBHOOKS", "auto", str.lower)
    # Redis broker: an unacked message is redelivered after this many seconds.
    broker_visibility_timeout: int = _env("BFF_BROKER_VISIBILITY_TIMEOUT", 3600, int)
    sse_heartbeat: float = _env("BFF_SSE_HEARTBEAT", 15.0, float)
    # DB poll interval for SSE without Redis (a safety net with it).
    sse_poll: float = _env("BFF_SSE_POLL", 0.5, float)
    # Per web process: each open stream holds a gunicorn thread.
    sse_max_streams: int = _env("BFF_SSE_MAX_STREAMS", 24, int)
    # http:// webhooks to loopback (development).
    allow_http_webhooks: bool = _env("BFF_ALLOW_HTTP_WEBHOOKS", False, switch)
    webhook_retry_base: float = _env("BFF_WEBHOOK_RETRY_BASE", 5.0, float)  # doubles per attempt
    webhook_max_age: float = _env("BFF_WEBHOOK_MAX_AGE", 86400.0, float)  # then give up
    # Rows laid over app/providers/prices.toml.
    prices_file: str | None = _env("BFF_PRICES_FILE", parse=prices_file)
    # Longest any one SQL statement may run (lock waits included), seconds.
    db_statement_timeout: float = _env("BFF_DB_STATEMENT_TIMEOUT", 30.0, float)

    # BFF_PUBLIC_URL was set, not defaulted to this machine's loopback.
    public_url_set: bool = False

    @property
    def replicate_webhook_url(self) -> str | None:
        """Where Replicate sends prediction webhooks, or None (poll only).
        ``auto``: "reachable from outside" is the operator's word, BFF_PUBLIC_URL
        set explicitly to a host that is not loopback; ``on`` forces them (a
        tunnel, the tests), ``off`` never."""
        on = self.replicate_webhooks == "on" or (
            self.replicate_webhooks == "auto"
            and self.public_url_set
            and not _local(self.public_url)
        )
        return f"{self.public_url}/api/providers/replicate/webhook" if on else None

    @property
    def provider_poll_seconds(self) -> float:
        """With webhooks on, a look is only the fallback for a lost webhook."""
        if self.provider_poll_override is not None:
            return self.provider_poll_override
        return 10.0 if self.replicate_webhook_url else 2.0

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def webhooks_allow_loopback(self) -> bool:
        """Plain-http webhooks to loopback: the embedded default (a laptop) or
        opt-in. Not an embedded server given a public BFF_PUBLIC_URL: others
        hold keys there, and any of them could POST to this machine's own
        services (Flower, a database's HTTP port, an admin page)."""
        published = self.public_url_set and not _local(self.public_url)
        return self.allow_http_webhooks or (self.embedded_broker and not published)

    @property
    def broker_folder(self) -> Path:
        return self.var_dir / "broker"

    def key_for(self, env_var: str | None) -> str | None:
        """The configured value of a provider key variable (routing reads keys by
        the catalogue entry's ``key_env_var``, so a new model needs no table edit)."""
        return getattr(self, env_var.lower()) if env_var in KEY_VARS else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values = _parsed(cls, env)
        var_dir = Path(env.get("BFF_VAR_DIR") or _default_var_dir()).resolve()
        port = _setting("PORT", env.get("PORT") or "3001", int)
        for var in ("BFF_PUBLIC_URL", "REDIS_URL", "CELERY_BROKER_URL", "R2_ENDPOINT_URL"):
            if env.get(var):
                _setting(var, env[var])
        redis_url = env.get("REDIS_URL") or None
        if redis_url and not env.get("CELERY_BROKER_URL"):  # the broker too (unix:// is not)
            _setting("REDIS_URL", redis_url, allowed=BROKER_TOO)
        database_url = sqlalchemy_url(env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'bff.db'}")
        storage_backend, r2_endpoint_url = storage(env)
        rate_limits = provider_rate_limits(env, values.get("default_provider"))
        return cls(
            var_dir=var_dir,
            database_url=database_url,
            redis_url=redis_url,
            # (a host name in the URL, or kombu warns "No hostname was supplied")
            broker_url=env.get("CELERY_BROKER_URL") or redis_url or "filesystem://localhost/",
            storage_backend=storage_backend,
            media_root=Path(env.get("BFF_MEDIA_ROOT") or var_dir / "media").resolve(),
            public_url=(env.get("BFF_PUBLIC_URL") or f"http://127.0.0.1:{port}").rstrip("/"),
            public_url_set=bool(env.get("BFF_PUBLIC_URL")),
            port=port,
            r2_endpoint_url=r2_endpoint_url,
            rate_limits=rate_limits,
            **values,
        )
