"""Canceling a generation also stops the provider's work where the provider
allows it (Replicate predictions), so nobody keeps paying for an image that
will never be stored. Best effort: the stage guard stops the pipeline anyway."""

from __future__ import annotations

import logging
from decimal import Decimal

from app.domain.models import Generation
from app.domain.spend import UNIT_PRICE, TooLate
from app.domain.states import STAGE_DONE
from app.platform.config import Settings
from app.providers.base import Canceled, prediction_ids
from app.providers.refiners import cancel_refines
from app.providers.registry import PROVIDERS
from app.providers.replicate import cancel_predictions, client_for

log = logging.getLogger(__name__)


def cancel_remote(settings: Settings, gen: Generation) -> Canceled:
    """Cancel the generation's running predictions (ids read from the ``generate``
    and ``refine`` stages' checkpoints): those the cancel came too late for
    (they had succeeded: paid), for the caller to record
    (``spend.pay_too_late``), and those Replicate did not answer about. Both
    stages are looked at: a refine asked for at submit is pending while
    ``generate``'s predictions run."""
    refine = next((s for s in gen.stages if s.name == "refine"), None)
    found = Canceled()
    if refine is not None and refine.status not in STAGE_DONE:
        found = cancel_refines(settings, refine.output)
    return found + _cancel_generate(settings, gen)


def _cancel_generate(settings: Settings, gen: Generation) -> Canceled:
    entry = PROVIDERS.get(gen.provider or "")
    if entry is None or not entry.api.startswith("replicate") or not settings.replicate_api_token:
        return Canceled()
    stage = next((s for s in gen.stages if s.name == "generate"), None)
    if stage is None or stage.status in STAGE_DONE:
        return Canceled()
    ids = prediction_ids(stage.output)
    if not ids:
        return Canceled()
    try:
        client = client_for(settings.replicate_api_token, settings.replicate_base_url)
        answered = cancel_predictions(client, ids)
    except Exception:  # noqa: BLE001 - never fail the user's cancel over this
        log.warning("could not cancel predictions of %s", gen.id, exc_info=True)
        return Canceled(unanswered=ids)
    unanswered = [pid for pid in ids if pid not in answered]
    price = (stage.output or {}).get(UNIT_PRICE)
    succeeded = [pid for pid, status in answered.items() if status == "succeeded"]
    if succeeded and price is None:  # saved by a version before the price was
        log.warning("%s: predictions %s were paid, at a price not saved", gen.id, succeeded)
        return Canceled(unanswered=unanswered)
    # One image a prediction: generate asks each for one (``count`` predictions).
    late = [TooLate("generate", pid, Decimal(price), entry.id) for pid in succeeded]
    return Canceled(late, unanswered)
