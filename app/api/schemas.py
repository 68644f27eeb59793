"""Request bodies, validated with pydantic. Field names are the API's camelCase."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.pipeline.vlt import normalize_spec

PROVIDER_CHOICES = ("auto", "google-imagen", "openai-dalle3", "openai-gpt-image", "local")
SIZE_CHOICES = ("square", "portrait", "landscape", "1:1", "16:9", "9:16", "4:3", "3:4")
MAX_PROMPT = 5000
FeedbackType = Literal["outlier", "heart", "rating", "comment"]


class _Body(BaseModel):
    # Unknown fields are ignored so older clients keep working.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        # PostgreSQL text cannot hold NUL; refuse it here as a 422 with the field.
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v


class GenerationSettings(_Body):
    provider: Literal["auto", "google-imagen", "openai-dalle3", "openai-gpt-image", "local"] = (
        "auto"
    )
    strategy: Literal["balanced", "quality", "cost", "speed"] = "balanced"
    quality: Literal["standard", "hd"] = "standard"
    size: str = "square"
    count: int = Field(1, ge=1, le=4)
    enhance: Literal["auto", "off"] = "auto"  # off: the prompt goes to the provider as written
    style: Literal["natural", "vivid"] = "natural"  # DALL-E 3's
    safetyLevel: Literal[  # noqa: N815 - the API's camelCase
        "block_low_and_above", "block_medium_and_above", "block_only_high"
    ] = "block_only_high"  # Imagen's safety filter

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "size" not in data and "aspectRatio" in data:
            data = {**data, "size": data["aspectRatio"]}
        return data

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if v not in SIZE_CHOICES:
            raise ValueError(f"size must be one of {', '.join(SIZE_CHOICES)}")
        return v


class _Submit(_Body):
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    webhookUrl: str | None = Field(None, max_length=2000)
    userId: int | str | None = None


class PromptSubmit(_Submit):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    negativePrompt: str | None = Field(None, max_length=MAX_PROMPT)
    personaId: str | None = Field(None, max_length=40)


class ImageSubmit(_Submit):
    """JSON form of from-image (a ready ``vltSpec``) and the multipart fields."""

    vltSpec: dict[str, Any] | None = None
    prompt: str | None = Field(None, max_length=MAX_PROMPT)
    negativePrompt: str | None = Field(None, max_length=MAX_PROMPT)
    personaId: str | None = Field(None, max_length=40)

    @field_validator("vltSpec")
    @classmethod
    def _spec(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return normalize_spec(v) if v is not None else None


class FeedbackIn(_Body):
    feedbackType: FeedbackType
    rating: int | None = Field(None, ge=1, le=5)
    comment: str | None = Field(None, max_length=5000)
    assetId: int | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _needs(self) -> FeedbackIn:
        if self.feedbackType == "rating" and self.rating is None:
            raise ValueError("rating (1-5) is required when feedbackType is 'rating'")
        if self.feedbackType == "comment" and not self.comment:
            raise ValueError("comment is required when feedbackType is 'comment'")
        return self


class PersonaIn(_Body):
    name: str = Field(min_length=1, max_length=120)
    description: str = Field("", max_length=5000)
    keywords: list[str] = Field(default_factory=list, max_length=50)
    palette: list[str] = Field(default_factory=list, max_length=20)
    aesthetic: str | None = Field(None, max_length=60)
    isDefault: bool = False


class PersonaPatch(_Body):
    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = Field(None, max_length=5000)
    keywords: list[str] | None = Field(None, max_length=50)
    palette: list[str] | None = Field(None, max_length=20)
    aesthetic: str | None = Field(None, max_length=60)
    isDefault: bool | None = None
