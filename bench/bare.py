"""The baseline for the orchestration benchmark: a bare Celery app with seven
no-op tasks under our task names, so ``app.platform.queue.dispatch`` builds the very
same chain, on the same broker, queues and Celery settings
(``app.platform.queue.celery_config``). The last task announces completion on the
same Redis channel our ``store`` stage does, so the benchmark waits on both
the same way. ``celery -A bench.bare worker ...``."""

from __future__ import annotations

from celery import Celery

from app.pipeline import STAGES
from app.platform.config import Settings
from app.platform.events import generation_final
from app.platform.queue import celery_config

settings = Settings.from_env()
app = celery = Celery("bare")
_config = celery_config(settings)
app.config_from_object(_config)


def _noop(name: str):
    @app.task(name=f"pipeline.{name}", acks_late=True)
    def task(generation_id: str) -> None:
        if name == STAGES[-1]:
            generation_final(settings, generation_id, "completed")

    return task


TASKS = [_noop(name) for name in STAGES]
