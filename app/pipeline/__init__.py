"""The stages, in order. Each module exposes ``run(ctx) -> StageResult``:
a plain function with no Celery in it (``runner.STAGE_FUNCS`` maps the
names to them and wraps them for the tasks). Only names here: what imports
this (the API's schemas, the ``bff`` command) loads no stage.

Every generation runs the seven of ``STAGES``; ``refine`` (Stage 7,
``app.pipeline.refine``) is an eighth, after ``store``, only for a
generation whose settings ask for it (``stages_for``) or for a refine
requested later on one of its images. A generation's own list is its stage
rows (``app.domain.generations.stage_names``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REFINE = "refine"
STAGES: tuple[str, ...] = (  # what every generation runs, in order
    "analyze",
    "enhance",
    "persona",
    "route",
    "optimize",
    "generate",
    "store",
)
ALL_STAGES: tuple[str, ...] = (*STAGES, REFINE)  # every stage there is, in order


def refine_wanted(options: Mapping[str, Any]) -> bool:
    """Do these settings (or a late request's options) ask for a refine?"""
    return bool(options.get("upscale") or options.get("removeBackground"))


def stages_for(settings: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The stages a new generation with these settings runs."""
    return ALL_STAGES if refine_wanted(settings or {}) else STAGES
