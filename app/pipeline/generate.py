"""Stage 6, ``generate``: call the chosen image provider.

Images a provider hands back as bytes are written straight to their final,
deterministic storage key (``store`` then verifies and records them);
images behind a URL are recorded for ``store`` to fetch. Provider errors
arrive already mapped (``providers.base``) and become stage outcomes here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..providers import (
    ImageRequest,
    ProviderRejected,
    ProviderTransient,
    ProviderUnavailable,
    get_provider,
    unavailable_reason,
)
from ..storage import StorageError, asset_key
from .context import StageContext, StageFailed, StageResult, StageTransient

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def build_request(ctx: StageContext) -> ImageRequest:
    gen = ctx.generation
    route, opt = ctx.output_of("route"), ctx.output_of("optimize")
    spec = ctx.output_of("analyze").get("spec") or ctx.output_of("input").get("vltSpec") or {}
    record = (spec.get("records") or [{}])[0]
    colors = record.get("colors") or {}
    palette = [c for c in (colors.get("primary"), colors.get("secondary")) if c]
    if not palette:  # from a prompt: the colour words it names, in order
        from .colors import FASHION_COLORS

        text = (opt.get("finalPrompt") or gen.prompt or "").lower()
        palette = sorted((c for c in FASHION_COLORS if c in text), key=text.find)[:2]
    return ImageRequest(
        generation_id=gen.id,
        prompt=opt.get("finalPrompt") or gen.prompt or "",
        negative_prompt=opt.get("negativePrompt") or "",
        aspect_ratio=route.get("aspectRatio", "1:1"),
        quality=(gen.settings or {}).get("quality", "standard"),
        count=int((gen.settings or {}).get("count", 1)),
        palette=palette,
        garment_type=record.get("garmentType"),
        pattern=colors.get("pattern"),
    )


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    provider_id = ctx.output_of("route").get("provider")
    if not provider_id:
        raise StageFailed("no provider was chosen by the route stage")
    if reason := unavailable_reason(provider_id, ctx.settings):
        raise StageFailed(reason)
    provider = get_provider(provider_id, ctx.settings)
    request = build_request(ctx)
    try:
        result = provider.generate(request)
    except ProviderTransient as exc:
        raise StageTransient(str(exc), exc.retry_after) from exc
    except (ProviderRejected, ProviderUnavailable) as exc:
        raise StageFailed(str(exc)) from exc

    outputs: list[dict[str, Any]] = []
    for i, out in enumerate(result.outputs):
        ref: dict[str, Any] = {"index": i, "contentType": out.content_type, **out.meta}
        if out.data is not None:
            key = asset_key(gen.user_id, gen.id, i, EXTENSIONS.get(out.content_type, "png"))
            try:
                ctx.storage.put(key, out.data, out.content_type)
            except StorageError as exc:
                raise StageTransient(f"storage unavailable: {exc}") from exc
            ref["storedKey"] = key
        else:
            ref["url"] = out.url
        outputs.append(ref)
    cost = Decimal(str(provider.price_for(request))) * len(outputs)
    gen.cost = cost
    return StageResult(
        {
            "provider": provider_id,
            "model": provider.model,
            "outputs": outputs,
            "sent": result.sent,
            "cost": float(cost),
            **result.meta,
        }
    )
