"""The model catalogue: one entry per model we can generate with. Routing,
``GET /api/providers``, pricing, request validation (``settings.provider``),
rate limits and the adapters all read it; nothing else names a model.

An entry says which provider API serves the model (``api``: one adapter per
API, ``registry.ADAPTERS``), the model's name (and version, for a versioned
community model on Replicate), how our ``ImageRequest`` maps onto the model's
input fields (``inputs``, in the vocabulary of ``app.providers.inputs``),
what it can do (``capabilities``), which row of ``prices.toml`` prices an
image (the table is keyed by the entry's id), and its rate-limit bucket.

Why Python data rather than a TOML file: an input mapping refers to request
fields and value tables, which TOML could only hold as strings in a
mini-language of our own; as frozen dataclasses a typo fails at import (and
in the type checker), tests can monkeypatch the table like any dict, and an
entry is still nothing but data: no code per model. Prices stay in TOML
(``prices.toml``) because operators override them without a deploy.

Adding a Replicate model: one entry here (its input schema read from the
model's API page, cited in ``source``), a price row in ``prices.toml``, the
schema in the fake (``tests/fakes/replicate_models.py``) and a test. See
docs/providers.md, "Adding a model".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from app.providers import pricing
from app.providers.base import ASPECT_RATIOS, Capabilities, ImageRequest
from app.providers.inputs import NEGATIVE, PROMPT, Const, From, Orientation, Ref, Source, map_inputs

Api = Literal["replicate-official", "replicate-versioned", "openai-images", "local"]
REPLICATE_HOSTS = ("replicate.delivery", ".replicate.delivery")
# dall-e-3 image URLs (exact host: any Azure account could sit under the suffix).
OPENAI_HOSTS = ("oaidalleapiprodscus.blob.core.windows.net",)
IMAGEN_SAFETY = ("block_low_and_above", "block_medium_and_above", "block_only_high")


@dataclass(frozen=True)
class ModelEntry:
    id: str  # our public id: settings.provider, the price table's key
    api: Api
    model: str  # the provider's model name ("owner/name" on Replicate)
    capabilities: Capabilities
    inputs: dict[str, Source]  # the model's input field -> where its value comes from
    source: str  # where the input schema (and price) was read
    key_env_var: str | None = None
    version: str | None = None  # replicate-versioned: POST /v1/predictions {version}
    price_size: str | None = None  # the input field whose value picks the price row's size
    price_quality: str | None = None  # ... and its quality
    per_call: int = 1  # images one call makes at most (one prediction: one image)
    rate_bucket: str = ""  # the global token bucket's name; "" = the id
    rate_limit: str | None = None  # default N/SECONDS (BFF_RATE_LIMIT_<BUCKET>); None: unlimited
    output_hosts: tuple[str, ...] = ()  # where store may download its outputs

    @property
    def bucket(self) -> str:
        return self.rate_bucket or self.id

    def map(self, request: ImageRequest) -> tuple[dict, dict]:
        """(the model's input fields for ``request``, notes on what we changed)."""
        return map_inputs(self.inputs, request, self.capabilities.max_prompt_length)

    def price_for(self, request: ImageRequest) -> float:
        """USD for one image of ``request``: the price row its sent size and quality pick."""
        sent, _ = self.map(replace(request, references=[]))
        size = str(sent.get(self.price_size, "*")) if self.price_size else "*"
        quality = str(sent.get(self.price_quality, "*")) if self.price_quality else "*"
        return pricing.price(self.id, quality, size)


def _caps(**kw) -> Capabilities:
    base = {"aspect_ratios": ASPECT_RATIOS, "negative_prompt": False, "max_images": 4}
    return Capabilities(**{**base, **kw})


def _replicate(**kw: Any) -> ModelEntry:
    """An official model on Replicate: the account's token, our default
    rate limit (BFF_RATE_LIMIT_<BUCKET> overrides it) and Replicate's delivery
    hosts."""
    base = {
        "api": "replicate-official",
        "key_env_var": "REPLICATE_API_TOKEN",
        "rate_limit": "100/60",
        "output_hosts": REPLICATE_HOSTS,
    }
    return ModelEntry(**{**base, **kw})


IMAGEN = _replicate(
    id="google-imagen",
    model="google/imagen-4-ultra",
    source="https://replicate.com/google/imagen-4-ultra/api/schema",
    capabilities=_caps(
        max_prompt_length=2000,
        quality_score=0.95,
        typical_latency_s=12.0,
        safety_levels=IMAGEN_SAFETY,
    ),
    inputs={
        "prompt": PROMPT,
        "aspect_ratio": From("aspect_ratio"),
        "output_format": Const("png"),
        "image_size": From("quality", {"standard": "1K", "hd": "2K"}),
        "safety_filter_level": From("safety_level"),
    },
    price_size="image_size",
)

FLUX_PRO = _replicate(
    id="flux-pro",
    model="black-forest-labs/flux-1.1-pro",
    source="https://replicate.com/black-forest-labs/flux-1.1-pro/versions/"
    "96ccd0e758a1796926584ded2246369cdf8eb3d7c34475cf9c442be5e097d926/api",
    capabilities=_caps(
        max_prompt_length=2000,  # no documented limit: kept to Imagen's, a safe length
        quality_score=0.9,
        typical_latency_s=8.0,
        reference_images=True,
        qualities=("standard",),  # no quality input: hd costs and looks the same
    ),
    inputs={
        "prompt": PROMPT,
        "aspect_ratio": From("aspect_ratio"),  # all five of ours are in its enum
        "output_format": Const("png"),
        "safety_tolerance": Const(2),  # the model's default (1 strictest .. 6)
        "prompt_upsampling": Const(False),  # the enhance stage already wrote the prompt
        "image_prompt": Ref(),  # Flux Redux: steers the composition towards the photo
    },
)

NANO_BANANA = _replicate(
    id="nano-banana",
    model="google/nano-banana",
    source="https://replicate.com/google/nano-banana/versions/"
    "f0a9d34b12ad1c1cd76269a844b218ff4e64e128ddaba93e15891f47368958a0/api",
    capabilities=_caps(
        # No aspect_ratio input: square from a prompt (with a reference, the
        # photo's own shape), so it serves square requests only.
        aspect_ratios=("1:1",),
        max_prompt_length=5000,
        quality_score=0.88,
        typical_latency_s=10.0,
        reference_images=True,
        qualities=("standard",),
    ),
    inputs={
        "prompt": PROMPT,
        "image_input": Ref(many=True),
        "output_format": Const("png"),
    },
)

DALLE3 = ModelEntry(
    id="openai-dalle3",
    api="openai-images",
    model="dall-e-3",
    key_env_var="OPENAI_API_KEY",
    source="https://platform.openai.com/docs/api-reference/images/create",
    capabilities=_caps(
        max_prompt_length=4000,
        quality_score=0.8,
        typical_latency_s=15.0,
        styles=("natural", "vivid"),
    ),
    inputs={
        "size": Orientation(
            {"square": "1024x1024", "landscape": "1792x1024", "portrait": "1024x1792"}
        ),
        "quality": From("quality", {"standard": "standard", "hd": "hd"}),
        "style": From("style"),  # natural (photographic, the default) or vivid
        "response_format": Const("url"),
        "prompt": PROMPT,
    },
    price_size="size",
    price_quality="quality",
    per_call=1,  # dall-e-3 takes n=1 only
    rate_limit="50/60",
    output_hosts=OPENAI_HOSTS,
)

GPT_IMAGE = ModelEntry(
    id="openai-gpt-image",
    api="openai-images",
    model="gpt-image-1",
    key_env_var="OPENAI_API_KEY",
    source="https://platform.openai.com/docs/api-reference/images/createEdit",
    capabilities=_caps(
        max_prompt_length=32000,
        quality_score=0.9,
        typical_latency_s=30.0,
        reference_images=True,  # through POST /v1/images/edits
    ),
    inputs={
        "size": Orientation(
            {"square": "1024x1024", "landscape": "1536x1024", "portrait": "1024x1536"}
        ),
        "quality": From("quality", {"standard": "medium", "hd": "high"}),
        "prompt": PROMPT,
        "image": Ref(),  # present: the edits endpoint (multipart) instead of generations
    },
    price_size="size",
    price_quality="quality",
    per_call=10,
    rate_limit="50/60",
    output_hosts=OPENAI_HOSTS,
)

LOCAL = ModelEntry(
    id="local",
    api="local",
    model="bff-local-v1",
    source="app/providers/local.py (offline Pillow renderer)",
    capabilities=_caps(
        negative_prompt=True,
        max_prompt_length=5000,
        quality_score=0.2,
        typical_latency_s=0.2,
        # It draws the garment the photo's analysis names: a stand-in for the
        # models that take the photo, so reference=image works offline too.
        reference_images=True,
    ),
    inputs={"prompt": PROMPT, "negative_prompt": NEGATIVE},
    per_call=4,
)

CATALOGUE: dict[str, ModelEntry] = {
    e.id: e for e in (IMAGEN, FLUX_PRO, NANO_BANANA, DALLE3, GPT_IMAGE, LOCAL)
}


def rate_limit_defaults() -> dict[str, str]:
    """Bucket -> default ``N/SECONDS`` for every rate-limited model."""
    return {e.bucket: e.rate_limit for e in CATALOGUE.values() if e.rate_limit}
