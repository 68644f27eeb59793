"""Stage 4, ``route``: choose provider + model. Routing is data: each entry of
the model catalogue (``PROVIDERS``) declares its capabilities (reference
images among them), price, quality score and typical latency, and a strategy
weighs normalised 0..1 components of them (the weights, the components and who
is excluded: docs/judgement.md, "Routing strategies"). An explicit
``settings.provider`` wins; with ``auto``, ``BFF_DEFAULT_PROVIDER`` when it is
a candidate, else the highest score."""

from __future__ import annotations

from typing import Any

from app.pipeline.context import StageContext, StageFailed, StageResult, StageTransient
from app.platform.config import Settings
from app.providers import PROVIDERS, ImageRequest, unavailable_reason
from app.providers.base import aspect_ratio_of
from app.providers.health import WindowStats, open_reason, recent_window_stats
from app.providers.refiners import price_per_image

MAX_PROMPT = 5000  # our own API's limit, used when no provider is available
LOCAL = "local"

WEIGHTS = {
    "balanced": {"quality": 0.3, "suitability": 0.25, "cost": 0.2, "speed": 0.15, "success": 0.1},
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
    if request.get("referenceImage") and not caps.reference_images:
        return "takes no reference image (settings.reference=image)"
    return None


def exclusion(provider_id: str, request: dict[str, Any], settings: Settings) -> str | None:
    """Why this provider can never serve this request with these settings, or None."""
    return unavailable_reason(provider_id, settings) or cannot_serve(provider_id, request)


def prompt_budget(request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The prompt length ``enhance`` must fit (it runs before the provider is
    chosen): the requested provider's limit, else the strictest among those
    that could serve the request."""
    wanted = request.get("provider") or "auto"
    if wanted != "auto" and wanted in PROVIDERS:
        return {
            "maxLength": PROVIDERS[wanted].capabilities.max_prompt_length,
            "source": f"requested provider {wanted}",
        }
    usable = [pid for pid in PROVIDERS if not exclusion(pid, request, settings)]
    if not usable:
        return {"maxLength": MAX_PROMPT, "source": "no provider available: the API's limit"}
    strictest = min(usable, key=lambda pid: (PROVIDERS[pid].capabilities.max_prompt_length, pid))
    return {
        "maxLength": PROVIDERS[strictest].capabilities.max_prompt_length,
        "source": f"strictest available provider {strictest} (of {', '.join(sorted(usable))})",
    }


def _probe(request: dict[str, Any]) -> ImageRequest:
    """One image of ``request``, as much of it as a price depends on."""
    quality = request.get("quality", "standard")
    return ImageRequest("", "", aspect_ratio=request["aspectRatio"], quality=quality)


def _components(
    candidates: list[str], request: dict[str, Any], health: dict[str, WindowStats]
) -> dict[str, dict[str, float]]:
    prices = {pid: float(PROVIDERS[pid].price_for(_probe(request))) for pid in candidates}
    latencies = {pid: PROVIDERS[pid].capabilities.typical_latency_s for pid in candidates}
    max_price, max_latency = max(prices.values()), max(latencies.values())
    out = {}
    for pid in candidates:
        caps = PROVIDERS[pid].capabilities
        suitability = 1.0
        if request.get("negativePrompt") and not caps.negative_prompt:
            suitability *= 0.7
        if request.get("promptLength", 0) > caps.max_prompt_length:
            suitability *= 0.6
        out[pid] = {
            "quality": caps.quality_score,
            "suitability": suitability,
            "cost": 1 - prices[pid] / max_price if max_price > 0 else 1.0,
            "speed": 1 - latencies[pid] / max_latency / 2 if max_latency > 0 else 1.0,
            "success": health.get(pid, WindowStats()).success_rate,
        }
    return out


def _candidates(
    request: dict[str, Any], settings: Settings, health: dict[str, WindowStats]
) -> tuple[list[str], dict[str, str], list[str]]:
    """The providers that may serve ``request``; why the others may not; notes."""
    wanted = request.get("provider") or "auto"
    static = {pid: why for pid in PROVIDERS if (why := exclusion(pid, request, settings))}
    circuits = {
        pid: why
        for pid in PROVIDERS
        if pid not in static and (why := open_reason(health.get(pid, WindowStats()), settings))
    }
    notes: list[str] = []
    if wanted != "auto":
        if why := (static.get(wanted) or unavailable_reason(wanted, settings)):
            raise StageFailed(f"provider {wanted} cannot serve this request: {why}")
        if wanted in circuits:  # asked for by name: use it, but say so
            notes.append(f"{wanted}: {circuits.pop(wanted)}; used because it was requested")
    excluded = {**static, **circuits}
    candidates = [pid for pid in PROVIDERS if pid not in excluded]
    if not candidates:
        detail = "; ".join(f"{k}: {v}" for k, v in excluded.items())
        if circuits:  # temporary: try again when the window has moved on
            raise StageTransient(f"no provider available right now: {detail}")
        raise StageFailed(f"no image provider can serve this request: {detail}")
    if wanted == "auto" and settings.default_provider != LOCAL:
        # The contract's default is "best available; local when no key is set":
        # the offline renderer is a fallback, not a competitor.
        remote = [pid for pid in candidates if pid != LOCAL]
        if remote and LOCAL in candidates:
            candidates = remote
            excluded[LOCAL] = "offline fallback: used only when no keyed provider can serve"
    return candidates, excluded, notes


def choose(
    request: dict[str, Any],
    settings: Settings,
    health: dict[str, WindowStats] | None = None,
) -> dict[str, Any]:
    health = health or {}
    strategy = request.get("strategy") or "balanced"
    weights = WEIGHTS[strategy]
    wanted = request.get("provider") or "auto"
    candidates, excluded, notes = _candidates(request, settings, health)
    components = _components(candidates, request, health)
    scores = {
        pid: round(sum(weights[k] * v for k, v in parts.items()), 4)
        for pid, parts in components.items()
    }
    if wanted != "auto":
        chosen, reason = wanted, "explicitly requested"
    elif settings.default_provider in candidates:
        chosen, reason = settings.default_provider, "BFF_DEFAULT_PROVIDER"
    else:
        chosen = max(candidates, key=lambda pid: (scores[pid], pid))
        reason = f"highest {strategy} score ({scores[chosen]})"
        if settings.default_provider:
            reason += f"; BFF_DEFAULT_PROVIDER {settings.default_provider} is excluded"
    return {
        "provider": chosen,
        "model": PROVIDERS[chosen].model,
        "strategy": strategy,
        "weights": weights,
        "scores": scores,
        "components": {
            pid: {k: round(v, 4) for k, v in c.items()} for pid, c in components.items()
        },
        "excluded": excluded,
        "aspectRatio": request["aspectRatio"],
        "reason": reason,
        **({"notes": notes} if notes else {}),
    }


def routing_request(
    settings: dict[str, Any], negative: str | None = None, prompt_length: int = 0
) -> dict[str, Any]:
    return {
        "provider": settings.get("provider", "auto"),
        "strategy": settings.get("strategy", "balanced"),
        "quality": settings.get("quality", "standard"),
        "aspectRatio": aspect_ratio_of(settings.get("size", "square")),
        "count": settings.get("count", 1),
        "referenceImage": settings.get("reference") == "image",
        "negativePrompt": negative,
        "promptLength": prompt_length,
    }


def estimate(settings: dict[str, Any], config: Settings) -> tuple[float, str | None]:
    """What a request will cost at most, before routing has chosen, and the
    provider that price is for: the named provider's price, or with ``auto``
    the dearest provider that could serve it (what a daily cap must cover),
    refining included when the settings ask for it."""
    request = routing_request(settings)
    wanted = request["provider"]
    names = [wanted] if wanted != "auto" else list(PROVIDERS)
    refine = price_per_image(settings)  # Stage 7 on Replicate; local images refine free
    prices = {
        pid: (PROVIDERS[pid].price_for(_probe(request)) + (0.0 if pid == LOCAL else refine))
        * int(request["count"])
        for pid in names
        if not exclusion(pid, request, config)
    }
    if not prices:
        return 0.0, None
    dearest = max(prices, key=lambda pid: prices[pid])
    return round(prices[dearest], 4), dearest


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    enhance, persona = ctx.output_of("enhance"), ctx.output_of("persona")
    prompt = persona.get("prompt") or enhance.get("mainPrompt") or gen.prompt or ""
    negative = enhance.get("negativePrompt") or gen.negative_prompt
    request = routing_request(gen.settings or {}, negative, len(prompt))
    health = recent_window_stats(ctx.session, ctx.settings.circuit_window_s)
    decision = choose(request, ctx.settings, health)
    decision["inputs"] = {k: v for k, v in request.items() if k != "negativePrompt"}
    decision["health"] = {
        pid: {"ok": s.ok, "failed": s.failed} for pid, s in sorted(health.items())
    }
    gen.provider, gen.model = decision["provider"], decision["model"]
    return StageResult(decision)
