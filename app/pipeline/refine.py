"""Stage 7, ``refine`` (optional, after ``store``): make variants of stored
images, an upscaled one (``settings.upscale``: 2 or 4) and/or a cut-out on a
transparent background (``settings.removeBackground``), each stored beside
its source and recorded as an asset with ``variant`` and ``source_asset_id``.

Why after ``store`` and not between ``generate`` and ``store``: a refine
works on an image we hold, whichever way it came (bytes from ``local`` or
OpenAI, a Replicate URL that expires in an hour), so it reads the stored
asset and has one input path; the same stage then serves a refine asked for
later (``POST /api/generate/<id>/assets/<assetId>/refine``), which can only
start from a stored asset; and a refine that fails leaves the originals
stored and shown (a retry resumes at ``refine``, paying nothing twice).

What to refine: a late request in ``pipeline_data["refine"]`` (one asset,
its options), else the settings (every original). A variant that already
exists is not made again. Engines: the offline one for ``local`` images
(``providers.local_refine``: free), else Replicate (``providers.refiners``),
with ``generate``'s paying rules: the budget checked and a rate-limit token
taken before each paid call, prediction ids checkpointed before waiting, one
look per run. Upscale and cut-out are made from the same source side by side
(one wait, not two); to cut out an upscaled image, refine that one later.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from app.domain.models import GenerationAsset, utcnow
from app.domain.states import LATE_REQUEST
from app.pipeline import payments
from app.pipeline.context import (
    StageContext,
    StageFailed,
    StageResult,
    StageTransient,
    hold_cost,
    provider_outcomes,
)
from app.pipeline.lease import RUNNER_KEYS, paying
from app.pipeline.store import STORABLE_PIXELS, _image, download  # store's checks
from app.platform import ratelimit
from app.platform.config import Settings
from app.platform.storage import StorageError, asset_key
from app.providers import local_refine
from app.providers.base import Job
from app.providers.refiners import RATE_LIMIT_BUCKET, RefineOp, ReplicateRefiner, Task, output_url

# The key of a refine's saved state naming the predictions it was handed by a
# failed refine before it: never handed on again (their outputs age).
INHERITED = "inherited"


def ops_for(options: Mapping[str, Any]) -> list[RefineOp]:
    ops = []
    if options.get("upscale"):
        ops.append(RefineOp("upscaled", int(options["upscale"])))
    if options.get("removeBackground"):
        ops.append(RefineOp("cutout"))
    return ops


def oversize(asset: GenerationAsset, op: RefineOp, local: bool, settings: Settings) -> str | None:
    """Why ``op`` on ``asset`` would make a bigger image than we take; None
    when it would not. Offline: what our worker may hold (an upscaled variant
    upscaled again, 4096² by 4, is 268 M pixels: gigabytes). On Replicate, the
    work is Replicate's, but what we could not store would be paid for anyway."""
    scale = op.scale if op.variant == "upscaled" else None
    most, bound = (
        (settings.max_image_pixels, "BFF_MAX_IMAGE_PIXELS")
        if local
        else (STORABLE_PIXELS, "what can be stored")
    )
    if not scale or asset.width * asset.height * scale * scale <= most:
        return None
    w, h = asset.width * scale, asset.height * scale
    why = (
        f"upscaling this {asset.width}x{asset.height} image {scale}x would make {w}x{h}"
        f" ({w * h / 1e6:.0f} M pixels); at most {most / 1e6:.0f} M ({bound})"
    )
    return why if asset.variant == "original" else f"{why}: upscale the original image instead"


def _plan(ctx: StageContext) -> list[Task]:
    """The variants still to make: (source asset, op) pairs without one yet."""
    gen = ctx.generation
    late = (gen.pipeline_data or {}).get(LATE_REQUEST)
    assets = {a.id: a for a in gen.assets}
    if late:
        sources, ops = [assets.get(late.get("assetId"))], ops_for(late)
        if sources[0] is None:
            raise StageFailed("the image to refine no longer exists")
    else:
        sources, ops = [a for a in gen.assets if a.variant == "original"], ops_for(gen.settings)
    made = {(a.source_asset_id, (a.meta or {}).get("refine")) for a in gen.assets}
    todo = [(src, op) for src in sources for op in ops if (src.id, op.key) not in made]
    for src, op in todo:
        if why := oversize(src, op, gen.provider == "local", ctx.settings):
            raise StageFailed(why)
    return [Task(f"{src.id}:{op.key}", op, _reader(ctx, src)) for src, op in todo]


def _reader(ctx: StageContext, asset: GenerationAsset):
    def read() -> bytes:
        try:
            return ctx.storage.get(asset.r2_key)
        except KeyError as exc:
            raise StageFailed("the image to refine is missing from storage") from exc
        except StorageError as exc:
            raise StageTransient(f"storage unavailable: {exc}") from exc

    return read


def run(ctx: StageContext) -> StageResult:
    gen = ctx.generation
    tasks = _plan(ctx)
    if not tasks:
        return StageResult({"variants": [], "cost": 0.0, "note": "nothing left to refine"})
    if gen.provider == "local":
        made, engine, meta = _local(ctx, tasks), "local", {}
        cost = Decimal("0")
    else:
        made, meta = _replicate(ctx, tasks)  # paid (``spend.pay``) as each prediction ends
        engine, cost = "replicate", _price(tasks)
    try:
        variants = _record(ctx, tasks, made, engine)
    except StorageError as exc:
        raise StageTransient(f"storage unavailable: {exc}") from exc
    return StageResult({"engine": engine, "variants": variants, "cost": float(cost), **meta})


def _price(tasks: list[Task]) -> Decimal:
    return sum((Decimal(str(t.op.model.price)) for t in tasks), Decimal("0"))


def _local(ctx: StageContext, tasks: list[Task]) -> dict[str, bytes]:
    palette = (ctx.output_of("generate").get("sent") or {}).get("palette") or []
    made = {}
    for t in tasks:
        data = t.source()
        if t.op.variant == "upscaled":
            made[t.key] = local_refine.upscale(data, t.op.scale or 2)
        else:
            made[t.key] = local_refine.cutout(data, palette)
    return made


def _replicate(ctx: StageContext, tasks: list[Task]) -> tuple[dict[str, bytes], dict[str, Any]]:
    if not ctx.settings.replicate_api_token:
        raise StageFailed("REPLICATE_API_TOKEN not configured (refine runs on Replicate)")
    saved = {k: v for k, v in ctx.previous.items() if k not in RUNNER_KEYS}
    # Only this plan's (those a failed refine made, kept for one asked again
    # (``INHERITED``), may name others).
    planned = {t.key for t in tasks}
    saved["predictions"] = {
        k: v for k, v in (saved.get("predictions") or {}).items() if k in planned
    }
    # Held against the daily cap before the first paid call (``spend.hold``).
    hold_cost(ctx, saved, sum(t.op.model.price for t in tasks), "refine")

    def before_paid_call() -> None:
        ratelimit.acquire(ctx.settings, RATE_LIMIT_BUCKET, job.state.get(ratelimit.RESERVED))
        job.save({ratelimit.RESERVED: None})  # the fence: a taken-over copy stops here

    prices = {t.key: Decimal(str(t.op.model.price)) for t in tasks}
    job = Job(
        state=saved,
        saver=paying(ctx.checkpoint, lambda ids: refiner.cancel(ids), saved),
        acquire=before_paid_call,
        poll_every=ctx.settings.provider_poll_seconds,
        paid=payments.paid_as_read(ctx, saved, "replicate", "refine", lambda k, _p: prices[k]),
    )
    refiner = ReplicateRefiner(ctx.settings, job, ctx.generation.id)
    with provider_outcomes():
        finished = refiner.run(tasks)
    predictions = {key: p["id"] for key, p in finished.items()}
    made = {key: download(ctx.settings, output_url(p)) for key, p in finished.items()}
    metrics = {key: p.get("metrics") or {} for key, p in finished.items()}
    return made, {"predictions": predictions, "metrics": metrics}


def _record(
    ctx: StageContext, tasks: list[Task], made: dict[str, bytes], engine: str
) -> list[dict[str, Any]]:
    """Store each variant under its own key and add its asset row (written
    with the stage's record, in one transaction)."""
    gen = ctx.generation
    last = ctx.session.scalar(
        select(func.max(GenerationAsset.position)).where(GenerationAsset.generation_id == gen.id)
    )
    position, out = (last if last is not None else -1) + 1, []
    for t in tasks:
        data = made[t.key]
        content_type, ext, width, height = _image(data)
        key = asset_key(gen.user_id, gen.id, position, ext)
        url = ctx.storage.put(key, data, content_type)
        source_id = int(t.key.split(":")[0])
        model = "local" if engine == "local" else t.op.model.name
        ctx.session.add(
            GenerationAsset(
                generation_id=gen.id,
                position=position,
                r2_key=key,
                cdn_url=url,
                content_type=content_type,
                file_size=len(data),
                width=width,
                height=height,
                provider_id=gen.provider,
                asset_type="image",
                meta={"refine": t.op.key, "model": model},
                variant=t.op.variant,
                source_asset_id=source_id,
                created_at=utcnow(),
            )
        )
        out.append(
            {"sourceAssetId": source_id, "variant": t.op.variant, "refine": t.op.key}
            | {"key": key, "url": url, "width": width, "height": height, "model": model}
        )
        position += 1
    return out
