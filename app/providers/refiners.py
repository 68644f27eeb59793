"""Refiners on Replicate: models that make a variant of an image we have
already stored (Stage 7, ``app.pipeline.refine``). Both are community models,
run as *versioned* predictions (``POST /v1/predictions`` with ``version``),
pinned to a version whose input schema we read from its API page:

- upscale: ``nightmareai/real-esrgan``, inputs ``image`` (uri), ``scale``
  (number, 0–10, default 4), ``face_enhance`` (bool, default false); output a
  URI. https://replicate.com/nightmareai/real-esrgan/api
- cut-out: ``851-labs/background-remover``, inputs ``image`` (uri),
  ``threshold`` (0.0–1.0; 0 = soft alpha), ``reverse`` (bool),
  ``background_type`` ("rgba", …), ``format`` ("png", …); output a URI.
  https://replicate.com/851-labs/background-remover/api — chosen because its
  schema lets us *ask* for an RGBA PNG with a soft alpha (fabric edges, sheer
  cloth), where ``lucataco/remove-bg`` takes only ``image``.

The source image goes up the way the SDK sends files (``client.files.create``,
``POST /v1/files``), never as a public URL of a private object. The paying
rules are ``generate``'s: a rate-limit token and a fencing checkpoint before
each create, the prediction id saved before anything waits on it, one look per
run (``ProviderPending`` frees the worker), a re-run resumes the saved ids.
Errors are mapped by ``replicate.replicate_errors``, once.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.domain.spend import TooLate
from app.platform.config import Settings
from app.providers import pricing
from app.providers.base import Canceled, Job, output_urls, prediction_ids
from app.providers.catalog import IMAGEN
from app.providers.inputs import webhook_args
from app.providers.replicate import cancel_predictions, client_for, look_once, replicate_errors

# Replicate limits creates per account: refines take tokens from the same
# bucket as the catalogue's Imagen entry (BFF_RATE_LIMIT_GOOGLE_IMAGEN).
RATE_LIMIT_BUCKET = IMAGEN.bucket


@dataclass(frozen=True)
class RefineModel:
    price_id: str  # its row in prices.toml
    name: str  # owner/name on Replicate
    version: str  # the pinned version id

    @property
    def price(self) -> float:
        return pricing.price(self.price_id, "*")


UPSCALER = RefineModel(
    "replicate-real-esrgan",
    "nightmareai/real-esrgan",
    "42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b",
)
BACKGROUND_REMOVER = RefineModel(
    "replicate-background-remover",
    "851-labs/background-remover",
    "a029dff38972b5fda4ec5d75d7d1cd25aeff621d2cf4946a41055d7db66b80bc",
)


@dataclass(frozen=True)
class RefineOp:
    """One variant to make of one source image."""

    variant: str  # "upscaled" | "cutout"
    scale: int | None = None  # upscaled: 2 or 4

    @property
    def key(self) -> str:
        return f"upscaled-x{self.scale}" if self.variant == "upscaled" else self.variant

    @property
    def model(self) -> RefineModel:
        return UPSCALER if self.variant == "upscaled" else BACKGROUND_REMOVER

    def inputs(self, image_url: str) -> dict[str, Any]:
        """Only fields the pinned version's schema has."""
        if self.variant == "upscaled":
            return {"image": image_url, "scale": self.scale, "face_enhance": False}
        return {
            "image": image_url,
            "threshold": 0.0,  # soft alpha
            "reverse": False,
            "background_type": "rgba",
            "format": "png",
        }


@dataclass
class Task:
    """A variant to make: ``key`` names it in the saved state; ``source``
    the stored bytes of the image it is made from (read only if needed)."""

    key: str
    op: RefineOp
    source: Any  # () -> bytes


class ReplicateRefiner:
    """Runs refine tasks as versioned Replicate predictions, resumably."""

    def __init__(self, settings: Settings, job: Job, generation_id: str) -> None:
        self.client = client_for(settings.replicate_api_token, settings.replicate_base_url)
        self.job = job
        # With a reachable public URL, Replicate's webhook wakes the stage at once.
        self.webhook = webhook_args(settings.replicate_webhook_url, generation_id)

    def run(self, tasks: list[Task]) -> dict[str, dict[str, Any]]:
        """Each task's finished prediction (``output`` a URL), by key; or
        ``ProviderPending`` while any is still running."""
        ids: dict[str, str] = dict(self.job.state.get("predictions") or {})
        for task in tasks:
            if task.key in ids:
                continue  # paid for by an earlier run: resume it
            image_url = self._upload(task)
            self.job.acquire()  # a token, and the fence: a taken-over copy stops here
            with replicate_errors("create"):
                prediction = self.client.predictions.create(
                    version=task.op.model.version, input=task.op.inputs(image_url), **self.webhook
                )
            ids[task.key] = prediction.id
            self.job.save({"predictions": ids})  # before waiting on it
        models = {t.key: t.op.model.name for t in tasks}
        return look_once(self.client, self.job, ids, models, dict)

    def _upload(self, task: Task) -> str:
        with replicate_errors("upload"):
            uploaded = self.client.files.create(
                io.BytesIO(task.source()), filename=f"{task.key}.png", content_type="image/png"
            )
        return uploaded.urls["get"]

    def cancel(self, ids: list[str]) -> int:
        return len(cancel_predictions(self.client, ids))


def price_per_image(options: Mapping[str, Any]) -> float:
    """USD to refine one image on Replicate as ``options`` ask (settings, or a
    late request): what a submit's estimate adds for each non-local image."""
    price = UPSCALER.price if options.get("upscale") else 0.0
    return price + (BACKGROUND_REMOVER.price if options.get("removeBackground") else 0.0)


def cancel_refines(settings: Settings, stage_output: dict[str, Any] | None) -> Canceled:
    """Best effort: cancel the refine predictions a running refine stage saved
    (a canceled or timed-out generation): those already paid for, and those
    Replicate did not answer about."""
    ids = prediction_ids(stage_output)
    if not ids or not settings.replicate_api_token:
        return Canceled()
    client = client_for(settings.replicate_api_token, settings.replicate_base_url)
    answered = cancel_predictions(client, ids)
    keys = {pid: key for key, pid in (stage_output or {})["predictions"].items()}
    late = [
        TooLate("refine", pid, Decimal(str(_model_of(keys[pid]).price)), "replicate")
        for pid, status in answered.items()
        if status == "succeeded"
    ]
    return Canceled(late, [pid for pid in ids if pid not in answered])


def _model_of(task_key: str) -> RefineModel:
    """The model a task (``<asset id>:<op key>``) runs."""
    return UPSCALER if task_key.split(":", 1)[-1].startswith("upscaled") else BACKGROUND_REMOVER


def output_url(prediction: dict[str, Any]) -> str:
    return output_urls(prediction.get("output"))[0]
