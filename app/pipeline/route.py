"""Stage 4, ``route``: choose provider + model. Routing is data: each adapter
declares its capabilities, price, quality and latency; a strategy is a set
of weights over normalised scores.

Excluded: providers without keys, and providers that cannot serve the
request (aspect ratio, image count). An explicit ``settings.provider`` wins
(the API already refused one that cannot serve the request).
Output: ``{provider, model, strategy, scores, excluded, aspectRatio, reason}``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..config import Settings
from ..models import Provider
from ..providers import PROVIDERS, ImageRequest, unavailable_reason
from ..providers.base import aspect_ratio_of
from .context import StageContext, StageFailed, StageResult

WEIGHTS = {
    "balanced": {
        "quality": 0.30,
        "suitability": 0.25,
        "cost": 0.20,
        "speed": 0.15,
        "success": 0.10,
    },
    "quality": {"quality": 0.60, "suitability": 0.20, "cost": 0.05, "speed": 0.05, "success": 0.10},
    "cost": {"quality": 0.10, "suitability": 0.20, "cost": 0.55, "speed": 0.05, "success": 0.10},
    "speed": {"quality": 0.10, "suitability": 0.20, "cost": 0.05, "speed": 0.55, "success": 0.10},
}


def cannot_serve(provider_id: str, request: dict[str, Any]) -> str | None:
    caps = PROVIDERS[provider_id].capabilities
    if request["aspectRatio"] not in caps.aspect_ratios:
        return f"aspect ratio {request['aspectRatio']} not supported"
    if request["count"] > caps.max_images:
        return f"at most {caps.max_images} images per request"
    return None


def exclusion(provider_id: str, request: dict[str, Any], settings: Settings) -> str | None:
    return unavailable_reason(provider_id, settings) or cannot_serve(provider_id, request)


def choose(
    request: dict[str, Any], settings: Settings, success_rates: dict[str, float] | None = None
) -> dict[str, Any]:
    strategy = request.get("strategy") or "balanced"
    weights = WEIGHTS[strategy]
    wanted = request.get("provider") or "auto"
    if wanted == "auto" and settings.default_provider:
        wanted = settings.default_provider
    excluded = {pid: why for pid in PROVIDERS if (why := exclusion(pid, request, settings))}
    candidates = [pid for pid in PROVIDERS if pid not in excluded]
    if not candidates:
        raise StageFailed(
            "no image provider can serve this request: "
            + "; ".join(f"{k}: {v}" for k, v in excluded.items())
        )
    probe = ImageRequest(
        generation_id="",
        prompt="",
        quality=request.get("quality", "standard"),
        aspect_ratio=request["aspectRatio"],
        count=1,
    )
    prices = {pid: PROVIDERS[pid].price_for(probe) for pid in candidates}
    latencies = {pid: PROVIDERS[pid].capabilities.typical_latency_s for pid in candidates}
    max_price, max_latency = max(prices.values()) or 1.0, max(latencies.values()) or 1.0
    rates = success_rates or {}
    scores = {}
    for pid in candidates:
        caps = PROVIDERS[pid].capabilities
        parts = {
            "quality": caps.quality_score,
            "suitability": 1.0
            if (caps.negative_prompt or not request.get("negativePrompt"))
            else 0.7,
            "cost": 1 - prices[pid] / max_price if max_price else 1.0,
            "speed": 1 - latencies[pid] / max_latency / 2,
            "success": rates.get(pid, 1.0),
        }
        scores[pid] = round(sum(weights[k] * v for k, v in parts.items()), 4)
    if wanted != "auto" and wanted in candidates:
        chosen, reason = wanted, "explicitly requested"
    elif wanted != "auto":
        raise StageFailed(
            f"provider {wanted} cannot serve this request: "
            f"{excluded.get(wanted, 'unknown provider')}"
        )
    else:
        chosen = max(candidates, key=lambda pid: (scores[pid], pid))
        reason = f"highest {strategy} score"
    return {
        "provider": chosen,
        "model": PROVIDERS[chosen].model,
        "strategy": strategy,
        "scores": scores,
        "excluded": excluded,
        "aspectRatio": request["aspectRatio"],
        "reason": reason,
    }


def routing_request(settings: dict[str, Any], negative: str | None = None) -> dict[str, Any]:
    return {
        "provider": settings.get("provider", "auto"),
        "strategy": settings.get("strategy", "balanced"),
        "quality": settings.get("quality", "standard"),
        "aspectRatio": aspect_ratio_of(settings.get("size", "square")),
        "count": settings.get("count", 1),
        "negativePrompt": negative,
    }


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    rows = ctx.session.scalars(select(Provider)).all()
    rates = {r.id: (r.success_count + 1) / (r.success_count + r.failure_count + 1) for r in rows}
    decision = choose(routing_request(gen.settings or {}, gen.negative_prompt), ctx.settings, rates)
    gen.provider, gen.model = decision["provider"], decision["model"]
    return StageResult(decision)
