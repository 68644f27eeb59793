"""The VLT spec: validation and normalisation (shape in ARCHITECTURE.md).

A supplied spec is validated at submit time (an invalid one is a 422, never a
failed job later); unknown garment types are kept as text, colours are
lower-cased and missing fields defaulted.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.domain.text import storable

# Words about a garment: a few of them (a spec is stored and prompted with).
WORDS, GARMENT, PROMPT = 200, 80, 5000  # the most characters of a field
Words = storable(WORDS)
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
    garmentType: Annotated[Words, Field(min_length=1, max_length=GARMENT)] = "garment"
    silhouette: Words = "regular"
    fabric: Fabric = Field(default_factory=Fabric)
    colors: Colors = Field(default_factory=Colors)
    construction: Construction = Field(default_factory=Construction)
    style: Style = Field(default_factory=Style)
    promptText: storable(PROMPT) | None = None
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


def strict_object(props: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema object as OpenAI's strict structured output wants it:
    every property required, nothing extra."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


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


LIMITS = {"promptText": PROMPT, "garmentType": GARMENT}  # the rest: WORDS


def _clip(raw: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    out = dict(raw)
    for name, value in raw.items():
        field = model.model_fields.get(name)
        if isinstance(value, dict) and field and isinstance(field.default_factory, type):
            out[name] = _clip(value, field.default_factory)
        elif isinstance(value, str):
            out[name] = value[: LIMITS.get(name, WORDS)]
    return out
