"""Stage 6, ``generate``: call the chosen image provider.

The adapter gets a ``Job``: the state an earlier run saved (prediction ids,
images already returned), a way to save more *before* waiting on anything
paid, a global rate-limit token dispenser (``app.platform.ratelimit``) and how
long until it looks again at work still running. So a provider still working,
or no token free, becomes ``StageWaiting`` (the worker is freed, the stage
re-runs later and resumes), and a retry never pays twice.

Images a provider hands back as bytes are written straight to their final,
deterministic storage key (``store`` then verifies and records them); if the
bucket is down they are kept inline (base64) for ``store``, because calling
the provider again would pay again. Images behind a URL are recorded for
``store`` to fetch. Provider errors arrive already mapped
(``providers.base``) and become stage outcomes here.
"""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal
from typing import Any

from app.domain import spend
from app.pipeline import payments
from app.pipeline.colors import named_in
from app.pipeline.context import (
    StageContext,
    StageFailed,
    StageResult,
    StageTransient,
    hold_cost,
    provider_outcomes,
)
from app.pipeline.lease import RUNNER_KEYS, paying
from app.pipeline.subject import head_garment, resolve
from app.platform import ratelimit
from app.platform.storage import StorageError, asset_key
from app.providers import (
    PROVIDERS,
    ImageRequest,
    get_provider,
    pricing,
    unavailable_reason,
)
from app.providers.base import (
    CONTENT_TYPES,
    EXTENSIONS,
    Job,
    ProviderResult,
    Reference,
    output_urls,
    prediction_ids,
)


def build_request(ctx: StageContext) -> ImageRequest:
    gen = ctx.generation
    route, opt = ctx.output_of("route"), ctx.output_of("optimize")
    spec = ctx.output_of("analyze").get("spec") or ctx.output_of("input").get("vltSpec") or {}
    # The designer's words win over the photo's analysis (garment, colours,
    # pattern); the photo fills in the rest, as in ``enhance``.
    subject = resolve(gen.prompt, (spec.get("records") or [None])[0])
    # The garment's colours: the resolved ones, else those the final prompt
    # names; the matched persona's palette fills the rest.
    palette = subject.colours or named_in(opt.get("finalPrompt") or "")
    palette = [c.lower() for c in palette]
    for extra in ctx.output_of("persona").get("palette") or []:
        if len(palette) >= 2:
            break
        if extra and extra.lower() not in palette:
            palette.append(extra.lower())
    settings = gen.settings or {}
    return ImageRequest(
        generation_id=gen.id,
        prompt=opt.get("finalPrompt") or gen.prompt or "",
        negative_prompt=opt.get("negativePrompt") or "",
        aspect_ratio=route.get("aspectRatio", "1:1"),
        quality=settings.get("quality", "standard"),
        count=int(settings.get("count", 1)),
        palette=palette[:2],
        garment_type=subject.garment or head_garment(opt.get("finalPrompt") or ""),
        pattern=subject.pattern,
        style=settings.get("style", "natural"),
        safety_level=settings.get("safetyLevel", "block_only_high"),
        references=_references(ctx),
    )


def _references(ctx: StageContext) -> list[Reference]:
    """The uploaded photo itself, when the request asks for it
    (``settings.reference: image``); read from storage on each run, never
    kept in the stage's saved state."""
    gen = ctx.generation
    if (gen.settings or {}).get("reference") != "image":
        return []
    if not gen.input_key:
        raise StageFailed("settings.reference is 'image' but the generation has no uploaded photo")
    try:
        data = ctx.storage.get(gen.input_key)
    except KeyError as exc:
        raise StageFailed("the uploaded photo is missing from storage") from exc
    except StorageError as exc:
        raise StageTransient(f"the uploaded photo cannot be read from storage: {exc}") from exc
    content_type = CONTENT_TYPES.get(gen.input_key.rsplit(".", 1)[-1], "image/png")
    return [Reference(data, content_type)]


def run(ctx: StageContext) -> StageResult:
    provider_id = ctx.output_of("route").get("provider")
    if not provider_id:
        raise StageFailed("no provider was chosen by the route stage")
    if reason := unavailable_reason(provider_id, ctx.settings):
        raise StageFailed(reason)
    bucket = PROVIDERS[provider_id].bucket  # models may share a provider's limit

    def before_paid_call() -> None:
        # A token reserved by an earlier run is this call's (and only this one's).
        ratelimit.acquire(ctx.settings, bucket, job.state.get(ratelimit.RESERVED))
        # A checkpoint right before paying: it fences a copy of this stage that
        # was taken over while it waited (StageLeaseLost) and renews the lease;
        # it names the call, so its payment is recorded once (``spend.pay``).
        job.save({ratelimit.RESERVED: None, spend.PAID_CALL: uuid.uuid4().hex})

    def price_of(_key: str, prediction: dict[str, Any]) -> Decimal:  # a Replicate prediction
        return Decimal(str(price)) * max(1, len(output_urls(prediction.get("output"))))

    state = {k: v for k, v in ctx.previous.items() if k not in RUNNER_KEYS}
    job = Job(
        state=state,
        saver=paying(ctx.checkpoint, lambda ids: provider.cancel(ids), state),
        acquire=before_paid_call,
        poll_every=ctx.settings.provider_poll_seconds,
        paid=payments.paid_as_read(ctx, state, provider_id, "generate", price_of),
    )
    provider = get_provider(provider_id, ctx.settings, job)
    request = build_request(ctx)
    # Jobs accepted together each passed the submit's check before any had
    # spent: before paying, the job holds its price against the cap, counting
    # what the others spent and hold (``spend.hold``).
    price = provider.price_for(request)
    state[spend.UNIT_PRICE] = str(price)  # saved with the predictions: a late cancel's price
    hold_cost(ctx, state, price * request.count, "image")
    with provider_outcomes():
        result = provider.generate(request)

    cost = Decimal(str(price)) * len(result.outputs)
    if not prediction_ids(job.state):  # (predictions were paid one by one, as read)
        call = job.state.get(spend.PAID_CALL)
        payments.pay(ctx, cost, provider_id, "generate", [call] if call else None)  # named before
    return StageResult(
        {
            "provider": provider_id,
            "model": provider.model,
            "outputs": _kept(ctx, result),
            "sent": result.sent,
            "cost": float(cost),
            "priceTable": pricing.table().name,  # which prices the cost was computed with
            **result.meta,
        }
    )


def _kept(ctx: StageContext, result: ProviderResult) -> list[dict[str, Any]]:
    """Each output as ``store`` takes it: bytes written to their final key
    (kept inline if the bucket is down: they were paid for), or a URL."""
    gen, outputs = ctx.generation, []
    for i, out in enumerate(result.outputs):
        ref: dict[str, Any] = {"index": i, "contentType": out.content_type, **out.meta}
        if out.data is not None:
            key = asset_key(gen.user_id, gen.id, i, EXTENSIONS.get(out.content_type, "png"))
            try:
                ctx.storage.put(key, out.data, out.content_type)
                ref["storedKey"] = key
            except StorageError:
                ref["data"] = base64.b64encode(out.data).decode()
        else:
            ref["url"] = out.url
        outputs.append(ref)
    return outputs
