"""GET /api/providers: every model, whether it can be used here and why not,
what it can do, and what an image costs, so a client shows the estimated
cost before it submits."""

from __future__ import annotations

from flask import Blueprint

from app.api.auth import load_user
from app.api.common import services
from app.api.responses import Out, respond
from app.domain.choices import QUALITIES
from app.providers import PROVIDERS, ImageRequest, pricing, unavailable_reason
from app.providers.base import ASPECT_RATIOS

bp = Blueprint("providers", __name__, url_prefix="/api")
bp.before_request(load_user)


class CapabilitiesOut(Out):
    aspect_ratios: list[str]
    qualities: list[str]
    max_count: int
    negative_prompt: bool
    max_prompt_length: int
    styles: list[str]
    safety_levels: list[str]
    reference_images: bool  # can take the uploaded photo itself (settings.reference=image)


class ProviderOut(Out):
    id: str
    model: str
    api: str  # replicate-official | replicate-versioned | openai-images | local
    version: str | None  # replicate-versioned: the model version
    source: str  # where the model's input schema and price were read
    available: bool
    unavailable_reason: str | None
    capabilities: CapabilitiesOut
    # USD per image by quality, then aspect ratio.
    prices: dict[str, dict[str, float]]


class ProviderList(Out):
    items: list[ProviderOut]
    price_table: str  # which table the prices come from (app/providers/prices.toml, or an override)


def describe(provider_id: str) -> dict:
    entry, settings = PROVIDERS[provider_id], services().settings
    caps = entry.capabilities
    why = unavailable_reason(provider_id, settings)
    return {
        "id": provider_id,
        "model": entry.model,
        "api": entry.api,
        "version": entry.version,
        "source": entry.source,
        "available": why is None,
        "unavailable_reason": why,
        "capabilities": {
            "aspect_ratios": list(caps.aspect_ratios),
            "qualities": list(caps.qualities),
            "max_count": caps.max_images,
            "negative_prompt": caps.negative_prompt,
            "max_prompt_length": caps.max_prompt_length,
            "styles": list(caps.styles),
            "safety_levels": list(caps.safety_levels),
            "reference_images": caps.reference_images,
        },
        "prices": {
            q: {
                r: entry.price_for(ImageRequest("estimate", "", aspect_ratio=r, quality=q))
                for r in ASPECT_RATIOS
            }
            for q in QUALITIES
        },
    }


@bp.get("/providers")
def providers():
    items = [describe(pid) for pid in PROVIDERS]
    return respond(ProviderList, {"items": items, "price_table": pricing.table().name})
