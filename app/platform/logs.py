"""Logging for the web and worker processes: plain text by default, one JSON
object per line with ``BFF_LOG_FORMAT=json``. Every line carries the
``generation_id`` and ``stage`` it was written for, from context variables
set by the request (the ``<generation_id>`` in its URL) and by the Celery task
(``pipeline.<stage>`` tasks take the generation id as their argument), so
``grep gen_…`` or a log query follows one job across every process.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, request

from app.platform.config import Settings

generation_id_var: ContextVar[str | None] = ContextVar("generation_id", default=None)
stage_var: ContextVar[str | None] = ContextVar("stage", default=None)


class ContextFilter(logging.Filter):
    """Stamps each record with the current generation id and stage."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.generation_id = getattr(record, "generation_id", None) or generation_id_var.get()
        record.stage = getattr(record, "stage", None) or stage_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "generation_id": getattr(record, "generation_id", None),
            "stage": getattr(record, "stage", None),
            "process": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ctx = [
            c for c in (getattr(record, "generation_id", None), getattr(record, "stage", None)) if c
        ]
        record.ctx = f" [{' '.join(ctx)}]" if ctx else ""
        return super().format(record)


def configure(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install our one handler on the root logger (replacing the one a previous
    ``create_app`` installed; other handlers, e.g. pytest's, stay)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_bff", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._bff = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    _connect_celery()
    return handler


def bind(generation_id: str | None, stage: str | None = None) -> None:
    generation_id_var.set(generation_id)
    stage_var.set(stage)


def init_app(app: Flask) -> None:
    @app.before_request
    def _bind_request() -> None:
        bind((request.view_args or {}).get("generation_id"))

    @app.teardown_request
    def _unbind_request(_exc: BaseException | None) -> None:
        bind(None)


def _task_context(task: Any, args: Any) -> tuple[str | None, str | None]:
    name = getattr(task, "name", "") or ""
    if name.startswith("pipeline.") and args:
        return str(args[0]), name.split(".", 1)[1]
    return None, None


def _on_prerun(task: Any = None, args: Any = None, **_: Any) -> None:
    bind(*_task_context(task, args))


def _on_postrun(**_: Any) -> None:
    bind(None)


def _connect_celery() -> None:
    from celery.signals import task_postrun, task_prerun

    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="bff-log-context-prerun")
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="bff-log-context-postrun")
