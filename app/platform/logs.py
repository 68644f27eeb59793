"""Logging for the web and worker processes: plain text by default, one JSON
object per line with ``BFF_LOG_FORMAT=json``. Every line carries the
``generation_id`` and ``stage`` it was written for, bound by the request (the
``<generation_id>`` in its URL) and by the Celery task (``pipeline.<stage>``
tasks take the generation id), so ``grep gen_…`` follows one job everywhere.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from celery.signals import after_setup_logger, task_postrun, task_prerun
from flask import Flask, request

from app.platform.config import Settings

_context: ContextVar[tuple[str | None, str | None]] = ContextVar("bff_log", default=(None, None))


def bind(generation_id: str | None, stage: str | None = None) -> None:
    _context.set((generation_id, stage))


def stamp(record: logging.LogRecord) -> bool:
    """Stamps each record with the current generation id and stage."""
    record.generation_id, record.stage = _context.get()
    return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "generation_id": record.generation_id,
            "stage": record.stage,
            "process": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(c for c in (record.generation_id, record.stage) if c)
        record.ctx = f" [{ctx}]" if ctx else ""
        return super().format(record)


# replicate's HTTP client; openai's own copy of httpx; the openai SDK's own
# logger (its "Retrying request in …" notice is INFO, once per retry).
SDK_HTTP_LOGGERS = ("httpx", "httpx2", "openai")


def configure(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install our one handler on the root logger (replacing the one a previous
    ``create_app`` installed; other handlers, e.g. pytest's, stay)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_bff", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._bff = True  # type: ignore[attr-defined]
    handler._bff_level = settings.log_level  # type: ignore[attr-defined]
    handler.addFilter(stamp)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # The SDKs' HTTP clients log each request at INFO: a line for every look
    # at a running prediction, every few seconds; openai each retry of its
    # own. Detail for DEBUG only: our own lines say what a call came to.
    chatty = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in SDK_HTTP_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
    return handler


@after_setup_logger.connect(weak=False, dispatch_uid="bff-log-level")
def _keep_the_level(logger: logging.Logger, **_: Any) -> None:
    """Celery's worker and beat set the root logger to their ``--loglevel``
    (WARNING when not given) after the app configured it; BFF_LOG_LEVEL
    decides in every process, as it does in ``web``."""
    for h in logger.handlers:
        if getattr(h, "_bff", False):
            logger.setLevel(h._bff_level)


def init_app(app: Flask) -> None:
    app.before_request(lambda: bind((request.view_args or {}).get("generation_id")))
    app.teardown_request(lambda _exc: bind(None))


@task_prerun.connect(weak=False, dispatch_uid="bff-log-context-prerun")
def _task_started(task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", "") or ""
    if name.startswith("pipeline.") and args:
        bind(str(args[0]), name.removeprefix("pipeline."))
    else:
        bind(None)


@task_postrun.connect(weak=False, dispatch_uid="bff-log-context-postrun")
def _task_finished(**_: Any) -> None:
    bind(None)
