"""The API's answers as pydantic models: every route's JSON, the webhook
payload, the SSE ``done`` event and the OpenAPI document's response schemas
all come from these, so none of them can drift from another.

Fields are named like the ORM's attributes, so ``from_attributes`` reads rows
as they are, and are written out under their camelCase alias; but an asset's
``url`` is made from its key and the storage's public base of the moment
(the validation context), never read from ``cdn_url``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from flask import Response, current_app
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    computed_field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from app.api.schemas import FeedbackType, field_title
from app.domain.feedback import feedback_state
from app.domain.generations import iso
from app.domain.models import Generation, GenerationAsset
from app.domain.states import (
    GENERATION_STATUSES,
    S_COMPLETED,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    S_SKIPPED,
)
from app.pipeline import ALL_STAGES, STAGES, stages_for
from app.platform.storage import current_public_base, public_url

# What ``iso`` writes: UTC with a trailing Z.
Timestamp = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Out(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        alias_generator=AliasGenerator(serialization_alias=to_camel),
        json_schema_serialization_defaults_required=True,  # defaults are written out too
        field_title_generator=field_title,
    )


M = TypeVar("M", bound=Out)


class Links(Out):
    self: str


def generation_path(generation_id: str) -> str:
    return f"/api/generate/{generation_id}"


class _Linked(Out):
    id: str

    @computed_field
    @property
    def links(self) -> Links:
        return Links(self=generation_path(self.id))


class AcceptedOut(_Linked):
    """The 202 answer to a submission (and to its replay)."""

    status: Literal["pending"] = "pending"


class PromptOut(Out):
    original: str | None
    enhanced: str | None
    final: str | None
    negative: str | None


class StageOut(Out):
    name: Literal[ALL_STAGES]
    status: Literal[S_PENDING, S_RUNNING, S_COMPLETED, S_SKIPPED, S_FAILED]
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_ms: int | None
    attempts: int = Field(ge=0)
    error: str | None
    output: dict[str, Any] | None


class AssetOut(Out):
    id: int
    url: str
    width: int
    height: int
    content_type: str
    file_size: int
    variant: Literal["original", "upscaled", "cutout"] = Field(
        description="original: what the provider made; upscaled, cutout: made from sourceAssetId"
    )
    source_asset_id: int | None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, asset: Any, info: ValidationInfo) -> Any:
        """``url`` from the key and the context's base (the storage's now)."""
        if not isinstance(asset, GenerationAsset):
            return asset
        url = public_url((info.context or {})["publicBase"], asset.r2_key)
        return {f: url if f == "url" else getattr(asset, f) for f in cls.model_fields}


# Before its first claim a generation has no stage rows: it shows these (its
# settings' stages: with ``refine`` when they ask for it), built once (a model
# instance is taken as it is, not validated again).
PENDING_STAGES = {
    names: tuple(
        StageOut(
            name=name,
            status=S_PENDING,
            started_at=None,
            finished_at=None,
            duration_ms=None,
            attempts=0,
            error=None,
            output=None,
        )
        for name in names
    )
    for names in (STAGES, ALL_STAGES)
}


class GenerationErrorOut(Out):
    stage: str | None
    message: str
    code: Literal["stage_failed", "timeout"] = Field(
        description="timeout: not final by BFF_GENERATION_TIMEOUT; stage_failed: anything else"
    )


class FeedbackStateOut(Out):
    """The caller's own standing feedback on a generation."""

    heart: bool
    rating: int | None = Field(ge=1, le=5)
    outlier: bool = Field(
        description="marked exceptional: the result stands out for the better; "
        "the learner's strongest positive signal"
    )


class GenerationOut(_Linked):
    """A generation as clients see it: the API, its webhook and its event stream."""

    status: Literal[GENERATION_STATUSES]
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None
    mode: Literal["prompt", "image"]
    settings: dict[str, Any]
    provider: str | None
    model: str | None
    persona_id: str | None
    prompt: PromptOut
    stages: list[StageOut]
    assets: list[AssetOut]
    cost: float
    error: GenerationErrorOut | None
    webhook_url: str | None
    batch_id: str | None = Field(description="the batch it belongs to; null for a single submit")
    feedback: FeedbackStateOut

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, gen: Any) -> Any:
        """``prompt`` and ``error`` are made from several columns (the row's
        own ``prompt`` is only the original), ``stages`` are pending before the
        first claim writes them; the rest is read by name."""
        if not isinstance(gen, Generation):
            return gen
        stages = gen.stages or PENDING_STAGES[stages_for(gen.settings)]
        outputs = {s.name: s.output or {} for s in stages}
        enhance, optimize = outputs.get("enhance", {}), outputs.get("optimize", {})
        derived = {
            "stages": stages,
            "prompt": {
                "original": gen.prompt,
                "enhanced": enhance.get("mainPrompt"),
                "final": optimize.get("finalPrompt"),
                "negative": optimize.get("negativePrompt")
                or enhance.get("negativePrompt")
                or gen.negative_prompt,
            },
            "error": {
                "stage": gen.error_stage,
                "message": gen.error_message,
                "code": gen.error_code or "stage_failed",
            }
            if gen.error_message
            else None,
            "feedback": feedback_state(gen),
        }
        return {f: derived[f] if f in derived else getattr(gen, f) for f in cls.model_fields}


class GenerationPage(Out):
    items: list[GenerationOut]
    next_cursor: str | None


class FeedbackOut(Out):
    """The feedback row an answer is about: the new one (201), or the heart or
    outlier a second one withdrew (200, ``removedAt`` set)."""

    id: int
    generation_id: str
    asset_id: int | None
    feedback_type: FeedbackType
    rating: int | None
    comment: str | None
    created_at: Timestamp
    removed_at: Timestamp | None
    feedback: FeedbackStateOut = Field(description="the generation's feedback after this request")

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: tuple[Any, dict[str, Any]]) -> Any:  # (the row, the state)
        row, state = data
        return {f: state if f == "feedback" else getattr(row, f) for f in cls.model_fields}


class PersonaOut(Out):
    id: str
    name: str
    description: str
    keywords: list[str]
    palette: list[str]
    aesthetic: str | None
    is_default: bool
    created_at: Timestamp
    updated_at: Timestamp


class PersonaPage(Out):
    items: list[PersonaOut]


class ErrorBody(Out):
    code: str
    message: str
    details: Any = None


class ErrorOut(Out):
    """Every error answer (4xx and 5xx): ``{"error": {code, message, details}}``."""

    error: ErrorBody


def _build(model: type[M], data: Any, base: str | None = None) -> M:
    """``data`` (a row, or a mapping of field names) as a ``model``; asset
    URLs on ``base``, by default the running app's storage's."""
    if base is None:
        base = current_public_base()  # once per answer, not per asset
    try:
        return model.model_validate(data, context={"publicBase": base})
    except ValidationError as exc:
        # Not the client's fault (the app answers those 422): our bug, so a 500.
        raise TypeError(f"the answer does not fit {model.__name__}") from exc


def respond(
    model: type[Out], data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = _build(model, data).model_dump_json(by_alias=True)
    return current_app.response_class(body, status, headers, mimetype="application/json")


def generation_json(gen: Generation, base: str) -> dict[str, Any]:
    """The generation's JSON as a dict (webhook payloads, SSE events, tests),
    its asset URLs on ``base``: its callers run outside a request's app."""
    return _build(GenerationOut, gen, base).model_dump(mode="json", by_alias=True)
