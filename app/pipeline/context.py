"""What every stage function receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from ..config import Settings
from ..models import Generation
from ..storage import Storage


class StageFailed(Exception):
    """The stage cannot succeed for this input: fail the generation with this message."""


class StageTransient(Exception):
    """A dependency hiccup: retry the stage later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class StageContext:
    session: Session  # read what you need, add rows; never commit
    generation: Generation
    settings: Settings
    storage: Storage

    @property
    def outputs(self) -> dict[str, Any]:
        return self.generation.pipeline_data or {}

    def output_of(self, stage: str) -> dict[str, Any]:
        return dict(self.outputs.get(stage) or {})


@dataclass
class StageResult:
    output: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
