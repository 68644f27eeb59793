"""Request bodies, validated with pydantic. Field names are the API's camelCase.

The models are what /openapi.json says the API accepts, so they refuse what
the document refuses: unknown fields (named in the 422), and values of
another JSON type (no coercion: ``0`` is not a boolean, ``"2"`` no integer).
Rules a JSON type cannot carry are in the document too, as patterns.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from app.pipeline.vlt import VltSpec

PROVIDER_CHOICES = ("auto", "google-imagen", "openai-dalle3", "openai-gpt-image", "local")
SIZE_CHOICES = ("square", "portrait", "landscape", "1:1", "16:9", "9:16", "4:3", "3:4")
MAX_PROMPT = 5000
FeedbackType = Literal["outlier", "heart", "rating", "comment"]
FORM_FIELDS = ("settings", "prompt", "negativePrompt", "personaId", "webhookUrl", "userId")
"""from-image's multipart fields besides the ``image`` file."""

NO_NUL = "^[^\\u0000]*$"
NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"  # and something besides whitespace


def _tidy(v: str) -> str:
    # PostgreSQL text cannot hold NUL: a 422 naming the field, not a DataError.
    # Lengths are checked before the strip, as the document's maxLength says.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v.strip()


def _not_blank(v: str) -> str:
    if not v:
        raise ValueError("must not be empty or only whitespace")
    return v


def _integral(v: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 (as JSON Schema says).
    return int(v) if isinstance(v, float) and v.is_integer() else v


Text = Annotated[str, AfterValidator(_tidy), Field(json_schema_extra={"pattern": NO_NUL})]
Words = Annotated[
    str,
    AfterValidator(_tidy),
    AfterValidator(_not_blank),
    Field(min_length=1, json_schema_extra={"pattern": NOT_BLANK}),
]
Int = Annotated[int, BeforeValidator(_integral)]
WebhookUrl = Annotated[
    str,
    AfterValidator(_tidy),
    Field(
        max_length=2000,
        json_schema_extra={
            "pattern": "^https://[^\\u0000]*$",
            "description": "https, to a host that resolves to public addresses only; "
            "plain http to loopback in development (BFF_ALLOW_HTTP_WEBHOOKS)",
        },
    ),
]
PersonaId = Annotated[Text, Field(max_length=40, description="one of the caller's personas")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


B = TypeVar("B", bound=_Body)


def parse(model: type[B], data: Any) -> B:
    """``data`` as ``model``, strictly all the way down: the vltSpec's own
    models are not ours and are lax unless the validation says so."""
    return model.model_validate(data, strict=True)


def _document_aspect_ratio(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    props["aspectRatio"] = {
        "enum": props["size"]["enum"],
        "deprecated": True,
        "description": "the older name of size",
    }
    schema["not"] = {"required": ["size", "aspectRatio"]}


class GenerationSettings(_Body):
    model_config = ConfigDict(json_schema_extra=_document_aspect_ratio)

    provider: Literal["auto", "google-imagen", "openai-dalle3", "openai-gpt-image", "local"] = (
        "auto"
    )
    strategy: Literal["balanced", "quality", "cost", "speed"] = "balanced"
    quality: Literal["standard", "hd"] = "standard"
    size: Literal[SIZE_CHOICES] = Field(
        "square", validation_alias=AliasChoices("size", "aspectRatio")
    )
    count: Int = Field(1, ge=1, le=4)


class _Submit(_Body):
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    webhookUrl: WebhookUrl | None = None
    userId: Int | str | None = Field(None, description="if sent, the API key's own user")


class PromptSubmit(_Submit):
    prompt: Annotated[Words, Field(max_length=MAX_PROMPT)]
    negativePrompt: Annotated[Text, Field(max_length=MAX_PROMPT)] | None = None
    personaId: PersonaId | None = None


class ImageSubmit(_Submit):
    """JSON form of from-image (a ready ``vltSpec``) and the multipart fields."""

    vltSpec: VltSpec | None = None
    prompt: Annotated[Text, Field(max_length=MAX_PROMPT)] | None = None
    negativePrompt: Annotated[Text, Field(max_length=MAX_PROMPT)] | None = None
    personaId: PersonaId | None = None


class FeedbackIn(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"feedbackType": {"const": "rating"}}},
                    "then": {"required": ["rating"], "properties": {"rating": {"type": "integer"}}},
                },
                {
                    "if": {"properties": {"feedbackType": {"const": "comment"}}},
                    "then": {
                        "required": ["comment"],
                        "properties": {"comment": {"type": "string", "pattern": NOT_BLANK}},
                    },
                },
            ]
        }
    )

    feedbackType: FeedbackType
    rating: Int | None = Field(None, ge=1, le=5, description="required when feedbackType is rating")
    comment: Annotated[Text, Field(max_length=5000)] | None = Field(
        None, description="required (not blank) when feedbackType is comment"
    )
    assetId: Int | None = Field(None, description="one of this generation's assets")
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _needs(self) -> FeedbackIn:
        if self.feedbackType == "rating" and self.rating is None:
            raise ValueError("rating (1-5) is required when feedbackType is 'rating'")
        if self.feedbackType == "comment" and not self.comment:
            raise ValueError("comment is required when feedbackType is 'comment'")
        return self


class PersonaIn(_Body):
    name: Annotated[Words, Field(max_length=120)]
    description: Annotated[Text, Field(max_length=5000)] = ""
    keywords: list[Text] = Field(default_factory=list, max_length=50)
    palette: list[Text] = Field(default_factory=list, max_length=20)
    aesthetic: Annotated[Text, Field(max_length=60)] | None = None
    isDefault: bool = False


class PersonaPatch(_Body):
    name: Annotated[Words, Field(max_length=120)] | None = None
    description: Annotated[Text, Field(max_length=5000)] | None = None
    keywords: list[Text] | None = Field(None, max_length=50)
    palette: list[Text] | None = Field(None, max_length=20)
    aesthetic: Annotated[Text, Field(max_length=60)] | None = None
    isDefault: bool | None = None
