"""The VLT spec: validation and normalisation (shape in ARCHITECTURE.md).

A supplied spec is validated at submit time (an invalid one is a 422, never a
failed job later); unknown garment types are kept as text, colours are
lower-cased and missing fields defaulted.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.pipeline.llm import strict_object


def _no_nul(v: str) -> str:
    if "\x00" in v:  # PostgreSQL cannot store it, and no garment is described with one
        raise ValueError("must not contain NUL characters")
    return v


# Words about a garment: a few of them (a spec is stored and prompted with).
NO_NUL = {"pattern": "^[^\\u0000]*$"}  # the document's word for _no_nul
Words = Annotated[str, Field(max_length=200, json_schema_extra=NO_NUL), AfterValidator(_no_nul)]
Extra = Words | int | float | bool | None  # what an unknown field may hold
MAX_EXTRA = 20  # unknown fields a part (or record) may carry


def _at_most(schema: dict[str, Any]) -> None:
    schema["maxProperties"] = len(schema["properties"]) + MAX_EXTRA


class _Part(BaseModel):
    # Unknown fields are kept (a client's own notes on the garment), if small
    # and few: as many as the known fields and MAX_EXTRA more, in all.
    model_config = ConfigDict(extra="allow", json_schema_extra=_at_most)
    __pydantic_extra__: dict[str, Extra]

    @model_validator(mode="after")
    def _few_extras(self) -> Any:
        sent = len(self.model_fields_set) + len(self.__pydantic_extra__ or {})
        if sent > len(type(self).model_fields) + MAX_EXTRA:
            raise ValueError(f"at most {MAX_EXTRA} fields besides the known ones")
        return self


class Fabric(_Part):
    type: Words = "unspecified"
    texture: Words | None = None
    weight: Words | None = None
    finish: Words | None = None


class Colors(_Part):
    primary: Words = "neutral"
    secondary: Words | None = None
    pattern: Words | None = None

    @field_validator("primary", "secondary", "pattern")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.strip().lower() if isinstance(v, str) and v.strip() else v


class Construction(_Part):
    seams: Words | None = None
    closure: Words | None = None
    details: Words | None = None


class Style(_Part):
    aesthetic: Words = "contemporary"
    formality: Words = "smart casual"
    season: Words = "all-season"


class VltRecord(_Part):
    garmentType: Annotated[Words, Field(min_length=1, max_length=80)] = "garment"
    silhouette: Words = "regular"
    fabric: Fabric = Field(default_factory=Fabric)
    colors: Colors = Field(default_factory=Colors)
    construction: Construction = Field(default_factory=Construction)
    style: Style = Field(default_factory=Style)
    promptText: (
        Annotated[str, Field(max_length=5000, json_schema_extra=NO_NUL), AfterValidator(_no_nul)]
        | None
    ) = None
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
    """One record (the vision model's answer) validated into a whole spec.
    A wordy model is cut short rather than refused (asked again, it would be
    paid again): each field to what a supplied spec may hold."""
    if not isinstance(raw, dict):
        raise ValueError("a VLT record must be a JSON object")
    return normalize_spec({"records": [_clip(raw, VltRecord)]})


def _clip(raw: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    out = dict(raw)
    for name, value in raw.items():
        field = model.model_fields.get(name)
        if isinstance(value, dict) and field and isinstance(field.default_factory, type):
            out[name] = _clip(value, field.default_factory)
        elif isinstance(value, str):
            limit = 5000 if name == "promptText" else 80 if name == "garmentType" else 200
            out[name] = value[:limit]
    return out
