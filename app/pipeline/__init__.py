"""The stages, in order. Each module exposes ``run(ctx) -> StageResult``:
a plain function with no Celery in it (``runner`` wraps it for the tasks).

Every generation runs the seven of ``STAGES``; ``refine`` (Stage 7,
``app.pipeline.refine``) is an eighth, after ``store``, only for a
generation whose settings ask for it (``stages_for``) or for a refine
requested later on one of its images. A generation's own list is its stage
rows (``app.domain.generations.stage_names``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.pipeline import analyze, enhance, generate, optimize, persona, refine, route, store
from app.pipeline.context import StageContext, StageResult

STAGE_FUNCS: dict[str, Callable[[StageContext], StageResult]] = {
    "analyze": analyze.run,
    "enhance": enhance.run,
    "persona": persona.run,
    "route": route.run,
    "optimize": optimize.run,
    "generate": generate.run,
    "store": store.run,
    "refine": refine.run,
}
ALL_STAGES: tuple[str, ...] = tuple(STAGE_FUNCS)  # every stage there is, in order
REFINE = "refine"
STAGES: tuple[str, ...] = ALL_STAGES[: ALL_STAGES.index(REFINE)]  # what every generation runs


def stages_for(settings: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The stages a new generation with these settings runs."""
    return ALL_STAGES if refine.wanted(settings or {}) else STAGES
