"""The seven stages, in order. Each module exposes ``run(ctx) -> StageResult``:
a plain function with no Celery in it (``runner`` wraps it for the tasks)."""

from __future__ import annotations

from collections.abc import Callable

from . import analyze, enhance, generate, optimize, persona, route, store
from .context import StageContext, StageResult

STAGES: tuple[str, ...] = (
    "analyze",
    "enhance",
    "persona",
    "route",
    "optimize",
    "generate",
    "store",
)
STAGE_FUNCS: dict[str, Callable[[StageContext], StageResult]] = {
    "analyze": analyze.run,
    "enhance": enhance.run,
    "persona": persona.run,
    "route": route.run,
    "optimize": optimize.run,
    "generate": generate.run,
    "store": store.run,
}
