"""gunicorn settings for the API (Procfile ``web`` and ``make dev``).

gthread workers: each open SSE stream or slow client holds a thread, not a
process. A stream mostly sleeps in a Redis pub/sub wait (or a 0.5 s DB poll
without Redis), so threads are cheap; the app admits at most
BFF_SSE_MAX_STREAMS (24) streams per process, which keeps 8 of the 32 threads
free for ordinary requests. ``timeout`` is the worker's heartbeat, not a
per-request limit, so long streams are not killed by it.
Override with GUNICORN_WORKERS / GUNICORN_THREADS (see docs/operations.md).
"""

import gc
import logging
import os
import signal


def _count(var: str, default: int) -> int:
    """A whole number of at least 1 from ``var``, or one sentence saying what is wrong."""
    raw = os.environ.get(var) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{var}={raw!r} cannot be used: it must be a whole number, 1 or more")
    return int(raw)


bind = f"0.0.0.0:{_count('PORT', 3001)}"
workers = _count("GUNICORN_WORKERS", 2)
worker_class = "gthread"
threads = _count("GUNICORN_THREADS", 32)
timeout = 60
graceful_timeout = 20
accesslog = "-"
logger_class = "app.platform.gunicorn_logs.Logger"  # JSON lines with BFF_LOG_FORMAT=json
# gunicorn 27's control socket (one per user home by default) is not used,
# and concurrent servers (a dev server beside the test suite) fought over it.
control_socket_disable = True
# The request head: the app's own limits (app/api/protocol.py: a 4096-byte URL,
# 64 fields, 16 KiB of headers) answer in JSON, so gunicorn's sit above them.
# They stay bounded: its parser copies the buffered head on every read, so the
# work grows with the square of the head's size (a 20 MB request line, allowed
# by limit_request_line = 0, took 76 s of CPU). 8190 is the largest bounded
# request line; past these gunicorn answers with its own HTML page.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


def on_starting(server) -> None:
    """A bad setting stops the server in one sentence before any worker boots
    (each would print the app's traceback, then gunicorn its own)."""
    from app.platform.config import ConfigError, Settings
    from app.platform.queue import warn_of_a_local_broker

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"Error: {exc}") from None
    warn_of_a_local_broker(settings)
    # The count gunicorn runs: --threads or GUNICORN_CMD_ARGS override this file's.
    running = server.cfg.threads if server is not None else threads
    if settings.sse_max_streams >= running:
        # Event streams could then hold every thread: /health and every other
        # request would wait behind them (GUNICORN_THREADS lowered alone).
        logging.getLogger("gunicorn.error").warning(
            "BFF_SSE_MAX_STREAMS=%d leaves no thread of GUNICORN_THREADS=%d for other "
            "requests: raise GUNICORN_THREADS or lower BFF_SSE_MAX_STREAMS",
            settings.sse_max_streams,
            running,
        )


def post_worker_init(worker) -> None:
    # The loaded app (SQLAlchemy, Celery, boto3, ...) is ~180k long-lived objects
    # that every full collection would walk again: 0.2-0.5 s pauses holding the
    # GIL under load, the API's p99. Frozen, a full collection takes ~2 ms.
    gc.freeze()
    # A stop (SIGTERM) ends the open event streams at once: each would hold
    # the worker for graceful_timeout, then be cut anyway.
    from app.platform.events import end_streams_on

    end_streams_on(signal.SIGTERM)
