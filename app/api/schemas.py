"""Request bodies, validated with pydantic. Field names are the API's camelCase.

The models are what /openapi.json says the API accepts, so they refuse what
the document refuses: unknown fields (named in the 422), and values of
another JSON type (no coercion: ``0`` is not a boolean, ``"2"`` no integer).
Rules a JSON type cannot carry are in the document too, as patterns.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.domain.choices import PROVIDER_CHOICES, QUALITIES, SIZE_CHOICES, STRATEGIES
from app.domain.text import no_nul, storable
from app.pipeline.vlt import VltSpec

MAX_PROMPT = 5000
FeedbackType = Literal["outlier", "heart", "rating", "comment"]

NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"  # and something besides whitespace


def _tidy(v: str) -> str:
    # Lengths are checked before the strip, as the document's maxLength says.
    return no_nul(v).strip()


def _not_blank(v: str) -> str:
    if not v:
        raise ValueError("must not be empty or only whitespace")
    return v


def _integral(v: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 (as JSON Schema says).
    return int(v) if isinstance(v, float) and v.is_integer() else v


def text(max_length: int | None = None) -> Any:
    """A string type: its length is checked as sent (the constraint comes
    before the validators, as in the document), then it is stripped."""
    return Annotated[storable(max_length), AfterValidator(str.strip)]


def words(max_length: int) -> Any:
    """A string type that must hold more than whitespace."""
    limits = Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": NOT_BLANK})
    return Annotated[str, limits, AfterValidator(_tidy), AfterValidator(_not_blank)]


Int = Annotated[int, BeforeValidator(_integral)]


def _unset(v: Any) -> bool:
    return v is None or v is False


WebhookUrl = Annotated[
    str,
    AfterValidator(no_nul),
    Field(
        max_length=2000,
        json_schema_extra={
            "pattern": "^https?://[^\\u0000]*$",
            "description": "https, to a host that resolves to public addresses only "
            "(plain http only to loopback, in development: BFF_ALLOW_HTTP_WEBHOOKS)",
        },
    ),
]
PersonaId = Annotated[text(40), Field(description="one of the caller's personas")]


def field_title(name: str, _field: Any = None) -> str:
    """A field's title in the document, in words: ``negativePrompt`` (and
    ``created_at``) is "Negative Prompt", not pydantic's "Negativeprompt"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").title()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, field_title_generator=field_title)


B = TypeVar("B", bound=_Body)


def parse(model: type[B], data: Any) -> B:
    """``data`` as ``model``, strictly all the way down: the vltSpec's own
    models are not ours and are lax unless the validation says so."""
    return model.model_validate(data, strict=True)


class GenerationSettings(_Body):
    provider: Literal[PROVIDER_CHOICES] = "auto"
    strategy: Literal[STRATEGIES] = "balanced"
    quality: Literal[QUALITIES] = "standard"
    size: Literal[SIZE_CHOICES] = "square"
    count: Int = Field(1, ge=1, le=4)
    enhance: Literal["auto", "off"] = "auto"  # off: the prompt goes to the provider as written
    reference: Literal["describe"] = Field(
        "describe", description="describe: the photo (if any) is analysed into words"
    )
    style: Literal["natural", "vivid"] = "natural"  # DALL-E 3's
    safetyLevel: Literal[  # noqa: N815 - the API's camelCase
        "block_low_and_above", "block_medium_and_above", "block_only_high"
    ] = "block_only_high"  # Imagen's safety filter
    # Stage 7, refine: variants of each image, made after it is stored. Kept
    # in the stored settings only when asked for (exclude_if).
    upscale: Literal[2, 4] | None = Field(
        None, description="also an upscaled copy of each image, 2x or 4x", exclude_if=_unset
    )
    removeBackground: bool = Field(  # noqa: N815 - the API's camelCase
        False,
        description="also a cut-out of each image on a transparent background",
        exclude_if=_unset,
    )
    aspectRatio: Literal[SIZE_CHOICES] | None = Field(
        None,
        exclude=True,  # stored and shown as size
        description="the older name of size, used when size is not sent",
        json_schema_extra={"deprecated": True},
    )

    @model_validator(mode="after")
    def _older_name(self) -> GenerationSettings:
        if self.aspectRatio is not None and "size" not in self.model_fields_set:
            self.size = self.aspectRatio
        return self


class ImageSettings(GenerationSettings):
    """from-image with an uploaded photo: the photo itself may go to the model."""

    reference: Literal["describe", "image"] = Field(
        "describe",
        description="describe: the photo is analysed into words (the default); "
        "image: the photo itself goes, with the enhanced prompt, to a model that "
        "takes reference images (only those are routed to)",
    )


class _Submit(_Body):
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    webhookUrl: WebhookUrl | None = None
    userId: Int | str | None = Field(None, description="if sent, the API key's own user")


class PromptSubmit(_Submit):
    prompt: words(MAX_PROMPT)
    negativePrompt: text(MAX_PROMPT) | None = None
    personaId: PersonaId | None = None


class ImageSubmit(_Submit):
    """from-image's multipart fields, beside the ``image`` file."""

    settings: ImageSettings = Field(default_factory=ImageSettings)
    prompt: text(MAX_PROMPT) | None = None
    negativePrompt: text(MAX_PROMPT) | None = None
    personaId: PersonaId | None = None


class SpecSubmit(ImageSubmit):
    """from-image as JSON: a ready VLT spec instead of the photo."""

    settings: GenerationSettings = Field(default_factory=GenerationSettings)  # no photo to send
    vltSpec: VltSpec


class RefineIn(_Body):
    """POST /api/generate/<id>/assets/<assetId>/refine: at least one option."""

    upscale: Literal[2, 4] | None = Field(None, description="upscale the image 2x or 4x")
    removeBackground: bool = Field(  # noqa: N815 - the API's camelCase
        False, description="cut the garment out onto a transparent background"
    )

    @model_validator(mode="after")
    def _something(self) -> RefineIn:
        if self.upscale is None and not self.removeBackground:
            raise ValueError("ask for upscale (2 or 4) and/or removeBackground: true")
        return self


def _only_with(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The document's rule for ``kind``'s own field: required with that
    feedbackType (as ``schema``), null or absent with any other."""
    return {
        "if": {"properties": {"feedbackType": {"const": kind}}},
        "then": {"required": [kind], "properties": {kind: schema}},
        "else": {"properties": {kind: {"type": "null"}}},
    }


class FeedbackIn(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _only_with("rating", {"type": "integer"}),
                _only_with("comment", {"type": "string", "pattern": NOT_BLANK}),
            ]
        }
    )

    feedbackType: FeedbackType
    # Constraints before the validator: after it, the document reads "ge", not "minimum".
    rating: Annotated[int, Field(ge=1, le=5), BeforeValidator(_integral)] | None = Field(
        None, description="required when feedbackType is rating; only then"
    )
    comment: text(5000) | None = Field(
        None, description="required (not blank) when feedbackType is comment; only then"
    )
    # Ids are 64-bit: a larger number names no asset, and the database cannot hold it.
    assetId: Annotated[int, Field(ge=1, le=2**63 - 1), BeforeValidator(_integral)] | None = Field(
        None, description="one of this generation's assets"
    )
    # A client's own notes: a few small values (they are stored with each row).
    metadata: dict[text(100), text(1000) | int | float | bool | None] | None = Field(
        None, max_length=20
    )

    @field_validator("rating", "comment")
    @classmethod
    def _own_type(cls, v: Any, info: ValidationInfo) -> Any:
        # A heart with a rating would drop the rating without a word.
        kind = info.data.get("feedbackType")
        if v is not None and kind is not None and kind != info.field_name:
            raise ValueError(f"only with feedbackType '{info.field_name}', not '{kind}'")
        return v

    @model_validator(mode="after")
    def _needs(self) -> FeedbackIn:
        if self.feedbackType == "rating" and self.rating is None:
            raise ValueError("rating (1-5) is required when feedbackType is 'rating'")
        if self.feedbackType == "comment" and not self.comment:
            raise ValueError("comment is required when feedbackType is 'comment'")
        return self


class PersonaIn(_Body):
    name: words(120)
    description: text(5000) = ""
    keywords: list[text(80)] = Field(default_factory=list, max_length=50)
    palette: list[text(40)] = Field(default_factory=list, max_length=20)
    aesthetic: text(60) | None = None
    isDefault: bool = False


def _kept(schema: dict[str, Any]) -> None:
    """A field left out is kept: its ``None`` default is no value it may be sent."""
    for prop in schema["properties"].values():
        if prop.get("default", 0) is None and prop.get("type") != "null" and "anyOf" not in prop:
            del prop["default"]


class PersonaPatch(_Body):
    """The fields sent are changed, the others kept: ``aesthetic: null``
    clears it; the rest cannot be null (leave a field out to keep it)."""

    model_config = ConfigDict(json_schema_extra=_kept)
    name: words(120) = None
    description: text(5000) = None
    keywords: list[text(80)] = Field(None, max_length=50)
    palette: list[text(40)] = Field(None, max_length=20)
    aesthetic: text(60) | None = None
    isDefault: bool = None


FORM_FIELDS = tuple(ImageSubmit.model_fields)
