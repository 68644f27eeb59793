"""Settings from the environment, in one place.

Every variable in ARCHITECTURE.md's contract table is read here and nowhere
else. Unset means the embedded default: SQLite and a filesystem broker under
``./var/``, local-disk storage served at ``/cdn/``, the offline ``local``
provider. ``create_app(config)`` lays a dict of the same names over the
environment, so tests configure the app exactly as an operator would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROVIDER_KEY_VARS = {
    "google-imagen": "REPLICATE_API_TOKEN",
    "openai-dalle3": "OPENAI_API_KEY",
    "openai-gpt-image": "OPENAI_API_KEY",
}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return int(raw) if raw not in (None, "") else default


RATE_LIMIT_DEFAULTS = {
    "google-imagen": "100/60",
    "openai-dalle3": "50/60",
    "openai-gpt-image": "50/60",
}


def _rate(raw: str) -> tuple[int, float]:
    """``"100/60"`` (100 per 60 s) or ``"100"`` (per minute)."""
    count, _, per = raw.partition("/")
    return int(count), float(per or 60)


def _rate_limits(env: Mapping[str, str]) -> dict[str, tuple[int, float]]:
    # BFF_RATE_LIMIT_GOOGLE_IMAGEN, BFF_RATE_LIMIT_OPENAI_DALLE3, BFF_RATE_LIMIT_OPENAI_GPT_IMAGE
    return {
        pid: _rate(env.get("BFF_RATE_LIMIT_" + pid.upper().replace("-", "_")) or default)
        for pid, default in RATE_LIMIT_DEFAULTS.items()
    }


def _default_var_dir() -> Path:
    """The checkout's ``var/`` when running from one (``make dev``, ``bff``
    from any directory find the same embedded database), else ``./var``."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout / "var" if (checkout / "pyproject.toml").exists() else Path("var")


class ConfigError(ValueError):
    """The environment cannot be run as it is; the message says what to set."""


R2_VARS = ("R2_ENDPOINT_URL", "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY")


def _storage(env: Mapping[str, str]) -> tuple[str, str | None]:
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


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    redis_url: str | None
    broker_url: str
    storage_backend: str
    media_root: Path
    public_url: str
    port: int
    r2_endpoint_url: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: str | None = None
    r2_bucket_name: str | None = None
    r2_cdn_url: str | None = None
    r2_region: str = "auto"
    replicate_api_token: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    replicate_base_url: str | None = None
    openai_base_url: str | None = None
    default_provider: str | None = None
    stage_max_attempts: int = 3
    # A generation whose lease (updated_at) is older than this is presumed
    # lost (worker killed, broker emptied) and re-dispatched by maintenance. A
    # running stage renews it every third of it (lease.heartbeat), a waiting
    # one each time it runs again, so it bounds recovery, not how long a
    # stage may take.
    stall_timeout: float = 30.0
    # A generation not final this many seconds after its submit (or retry)
    # fails with code "timeout" and its provider work is canceled.
    generation_timeout: float = 900.0
    maintenance_interval: float = 10.0
    submit_rate_limit: tuple[int, float] = (60, 60.0)  # (count, window seconds); 0 = off
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    local_render_scale: float = 1.0
    log_level: str = "INFO"
    # The LLM behind analyze (vision) and enhance, used when OPENAI_API_KEY is set.
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    # Circuit breaker for routing: a provider whose failure rate over the last
    # window (with at least min_samples outcomes) exceeds the rate is skipped.
    circuit_window_s: int = 300
    circuit_min_samples: int = 5
    circuit_failure_rate: float = 0.5
    # Global provider rate limits, id -> (requests, per seconds); shared via Redis.
    rate_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    # How long a generate run waits on a provider in-process before freeing the worker.
    provider_poll_seconds: float = 2.0
    # Redis broker: an unacked message is redelivered after this many seconds.
    broker_visibility_timeout: int = 3600
    log_format: str = "text"  # BFF_LOG_FORMAT: text | json
    sse_heartbeat: float = 15.0  # seconds between SSE comment heartbeats
    sse_poll: float = 0.5  # DB poll interval for SSE without Redis (a safety net with it)
    sse_max_streams: int = 24  # per web process: each open stream holds a gunicorn thread
    allow_http_webhooks: bool = False  # BFF_ALLOW_HTTP_WEBHOOKS: http:// to loopback (dev)
    webhook_retry_base: float = 5.0  # first retry delay; doubles per attempt
    webhook_max_age: float = 86400.0  # give up on a delivery after this many seconds
    prices_file: str | None = None  # BFF_PRICES_FILE: rows laid over app/providers/prices.toml
    # Longest any one SQL statement may run (lock waits included), seconds.
    db_statement_timeout: float = 30.0

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def webhooks_allow_loopback(self) -> bool:
        """Plain-http webhooks to loopback: the embedded default (a laptop) or opt-in."""
        return self.allow_http_webhooks or self.embedded_broker

    @property
    def broker_folder(self) -> Path:
        return self.var_dir / "broker"

    def provider_key(self, provider_id: str) -> str | None:
        var = PROVIDER_KEY_VARS.get(provider_id)
        if var is None:
            return None
        return {
            "REPLICATE_API_TOKEN": self.replicate_api_token,
            "OPENAI_API_KEY": self.openai_api_key,
        }[var]

    def key_for(self, env_var: str | None) -> str | None:
        """The configured value of a provider key variable (routing reads keys by
        the adapter's ``key_env_var``, so a new adapter needs no table edit)."""
        return {
            "REPLICATE_API_TOKEN": self.replicate_api_token,
            "OPENAI_API_KEY": self.openai_api_key,
        }.get(env_var or "")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        var_dir = Path(env.get("BFF_VAR_DIR") or _default_var_dir()).resolve()
        port = _int(env, "PORT", 3001)
        redis_url = env.get("REDIS_URL") or None
        # (a host name in the URL, or kombu warns "No hostname was supplied" per connection)
        broker_url = env.get("CELERY_BROKER_URL") or redis_url or "filesystem://localhost/"
        database_url = env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'bff.db'}"
        storage_backend, r2_endpoint_url = _storage(env)
        # Heroku-style URLs name the driver "postgres"; SQLAlchemy wants psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if database_url.startswith(prefix):
                database_url = "postgresql+psycopg://" + database_url[len(prefix) :]
        return cls(
            var_dir=var_dir,
            database_url=database_url,
            redis_url=redis_url,
            broker_url=broker_url,
            storage_backend=storage_backend,
            media_root=Path(env.get("BFF_MEDIA_ROOT") or var_dir / "media").resolve(),
            public_url=(env.get("BFF_PUBLIC_URL") or f"http://127.0.0.1:{port}").rstrip("/"),
            port=port,
            r2_endpoint_url=r2_endpoint_url,
            r2_access_key_id=env.get("R2_ACCESS_KEY_ID") or None,
            r2_secret_access_key=env.get("R2_SECRET_ACCESS_KEY") or None,
            r2_bucket_name=env.get("R2_BUCKET_NAME") or None,
            r2_cdn_url=(env.get("R2_CDN_URL") or "").rstrip("/") or None,
            r2_region=env.get("R2_REGION") or "auto",
            replicate_api_token=env.get("REPLICATE_API_TOKEN") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            replicate_base_url=env.get("REPLICATE_BASE_URL") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            default_provider=env.get("BFF_DEFAULT_PROVIDER") or None,
            stage_max_attempts=_int(env, "BFF_STAGE_MAX_ATTEMPTS", 3),
            stall_timeout=_float(env, "BFF_STALL_TIMEOUT", 30.0),
            generation_timeout=_float(env, "BFF_GENERATION_TIMEOUT", 900.0),
            maintenance_interval=_float(env, "BFF_MAINTENANCE_INTERVAL", 10.0),
            submit_rate_limit=_rate(env.get("BFF_SUBMIT_RATE_LIMIT") or "60/60"),
            max_upload_bytes=_int(env, "BFF_MAX_UPLOAD_BYTES", 10 * 1024 * 1024),
            max_image_pixels=_int(env, "BFF_MAX_IMAGE_PIXELS", 40_000_000),
            local_render_scale=_float(env, "BFF_LOCAL_RENDER_SCALE", 1.0),
            log_level=(env.get("BFF_LOG_LEVEL") or "INFO").upper(),
            llm_model=env.get("BFF_LLM_MODEL") or "gpt-4o-mini",
            llm_timeout_s=_float(env, "BFF_LLM_TIMEOUT", 30.0),
            circuit_window_s=_int(env, "BFF_CIRCUIT_WINDOW_S", 300),
            circuit_min_samples=_int(env, "BFF_CIRCUIT_MIN_SAMPLES", 5),
            circuit_failure_rate=_float(env, "BFF_CIRCUIT_FAILURE_RATE", 0.5),
            rate_limits=_rate_limits(env),
            provider_poll_seconds=_float(env, "BFF_PROVIDER_POLL_SECONDS", 2.0),
            broker_visibility_timeout=_int(env, "BFF_BROKER_VISIBILITY_TIMEOUT", 3600),
            log_format=(env.get("BFF_LOG_FORMAT") or "text").lower(),
            sse_heartbeat=_float(env, "BFF_SSE_HEARTBEAT", 15.0),
            sse_poll=_float(env, "BFF_SSE_POLL", 0.5),
            sse_max_streams=_int(env, "BFF_SSE_MAX_STREAMS", 24),
            allow_http_webhooks=(env.get("BFF_ALLOW_HTTP_WEBHOOKS") or "").lower()
            in ("1", "true", "yes", "on"),
            webhook_retry_base=_float(env, "BFF_WEBHOOK_RETRY_BASE", 5.0),
            webhook_max_age=_float(env, "BFF_WEBHOOK_MAX_AGE", 86400.0),
            db_statement_timeout=_float(env, "BFF_DB_STATEMENT_TIMEOUT", 30.0),
            prices_file=env.get("BFF_PRICES_FILE") or None,
        )
