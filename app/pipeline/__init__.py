"""The seven stages, in order. Each module exposes ``run(ctx) -> StageResult``:
a plain function with no Celery in it (``runner`` wraps it for the tasks)."""

from __future__ import annotations

from collections.abc import Callable

from app.pipeline import analyze, enhance, generate, optimize, persona, route, store
from app.pipeline.context import StageContext, StageResult

STAGE_FUNCS: dict[str, Callable[[StageContext], StageResult]] = {
    "analyze": analyze.run,
    "enhance": enhance.run,
    "persona": persona.run,
    "route": route.run,
    "optimize": optimize.run,
    "generate": generate.run,
    "store": store.run,
}
STAGES: tuple[str, ...] = tuple(STAGE_FUNCS)
