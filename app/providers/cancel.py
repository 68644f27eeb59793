"""Canceling a generation also stops the provider's work where the provider
allows it (Replicate predictions), so nobody keeps paying for an image that
will never be stored. Best effort: the stage guard stops the pipeline anyway."""

from __future__ import annotations

import logging

from app.domain.models import Generation
from app.domain.states import STAGE_DONE
from app.platform.config import Settings
from app.providers.base import prediction_ids
from app.providers.refiners import cancel_refines
from app.providers.registry import PROVIDERS, get_provider

log = logging.getLogger(__name__)


def cancel_remote(settings: Settings, gen: Generation) -> int:
    """Cancel the generation's running predictions (ids read from the ``generate``
    and ``refine`` stages' checkpoints); returns how many cancel requests were sent.
    Both stages are looked at: a refine asked for at submit is pending while
    ``generate``'s predictions run."""
    refine = next((s for s in gen.stages if s.name == "refine"), None)
    sent = 0
    if refine is not None and refine.status not in STAGE_DONE:
        sent = cancel_refines(settings, refine.output)
    return sent + _cancel_generate(settings, gen)


def _cancel_generate(settings: Settings, gen: Generation) -> int:
    entry = PROVIDERS.get(gen.provider or "")
    if entry is None or not entry.api.startswith("replicate"):
        return 0
    stage = next((s for s in gen.stages if s.name == "generate"), None)
    if stage is None or stage.status in STAGE_DONE:
        return 0
    ids = prediction_ids(stage.output)
    if not ids:
        return 0
    try:
        return get_provider(entry.id, settings).cancel(ids)
    except Exception:  # noqa: BLE001 - never fail the user's cancel over this
        log.warning("could not cancel predictions of %s", gen.id, exc_info=True)
        return 0
