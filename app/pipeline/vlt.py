"""The VLT spec: validation and normalisation (shape in ARCHITECTURE.md).

A supplied spec is validated at submit time (an invalid one is a 422, never a
failed job later); unknown garment types are kept as text, colours are
lower-cased and missing fields defaulted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.pipeline.llm import strict_object


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Fabric(_Part):
    type: str = "unspecified"
    texture: str | None = None
    weight: str | None = None
    finish: str | None = None


class Colors(_Part):
    primary: str = "neutral"
    secondary: str | None = None
    pattern: str | None = None

    @field_validator("primary", "secondary", "pattern")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.strip().lower() if isinstance(v, str) and v.strip() else v


class Construction(_Part):
    seams: str | None = None
    closure: str | None = None
    details: str | None = None


class Style(_Part):
    aesthetic: str = "contemporary"
    formality: str = "smart casual"
    season: str = "all-season"


class VltRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    garmentType: str = Field("garment", min_length=1, max_length=80)
    silhouette: str = "regular"
    fabric: Fabric = Field(default_factory=Fabric)
    colors: Colors = Field(default_factory=Colors)
    construction: Construction = Field(default_factory=Construction)
    style: Style = Field(default_factory=Style)
    promptText: str | None = Field(None, max_length=5000)
    confidence: float = Field(0.5, ge=0, le=1)

    @field_validator("garmentType", "silhouette")
    @classmethod
    def _norm(cls, v: str) -> str:
        return v.strip().lower()


class VltSpec(BaseModel):
    records: list[VltRecord] = Field(min_length=1, max_length=20)


def normalize_spec(raw: Any) -> dict[str, Any]:
    """Validate and normalise; raises ``pydantic.ValidationError``."""
    return VltSpec.model_validate(raw).model_dump(mode="json")


_S, _NS = {"type": "string"}, {"type": ["string", "null"]}

RECORD_SCHEMA: dict[str, Any] = strict_object(
    {
        "garmentType": _S,
        "silhouette": _S,
        "fabric": strict_object({"type": _S, "texture": _NS, "weight": _NS, "finish": _NS}),
        "colors": strict_object({"primary": _S, "secondary": _NS, "pattern": _NS}),
        "construction": strict_object({"seams": _NS, "closure": _NS, "details": _NS}),
        "style": strict_object({"aesthetic": _S, "formality": _S, "season": _S}),
        "promptText": _S,
        "confidence": {"type": "number"},
    }
)
"""JSON schema of one VLT record, as the vision model is asked to answer."""


def normalize_record(raw: Any) -> dict[str, Any]:
    """One record (the vision model's answer) validated into a whole spec."""
    if not isinstance(raw, dict):
        raise ValueError("a VLT record must be a JSON object")
    return normalize_spec({"records": [raw]})
