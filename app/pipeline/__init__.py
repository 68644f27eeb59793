"""The seven stages, in order. Each module exposes ``run(ctx) -> StageResult``:
a plain function with no Celery in it (``runner`` wraps it for the tasks)."""

from __future__ import annotations

from collections.abc import Callable

from app.pipeline import analyze, enhance, generate, optimize, persona, route, store
from app.pipeline.context import StageContext, StageResult

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
# Stages whose functions only read the database: all they write is their
# result, which the runner's record writes. The runner sends their reads in
# autocommit (no BEGIN/COMMIT round trips; under READ COMMITTED each statement
# sees a fresh snapshot either way) and fails one that adds or changes rows.
READ_ONLY_STAGES: frozenset[str] = frozenset({"analyze", "enhance", "persona", "route", "optimize"})
