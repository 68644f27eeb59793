"""Waking a stage that waits on a provider, when the provider says it is done
(a Replicate webhook): send the stage now instead of at its countdown.

Only a stage parked on that very prediction is woken. The woken run still
looks at the prediction itself (one GET): the notice says "look now", never
what the result is, so results come one way only.
"""

from __future__ import annotations

from celery import Celery

from app.domain.generations import stage_names
from app.domain.models import Generation
from app.domain.states import FINAL
from app.pipeline import lease
from app.platform.db import Database
from app.platform.queue import dispatch

STAGE = "generate"


class NotSent(Exception):
    """The broker could not take the wake-up (the countdown look still comes)."""


def wake(db: Database, celery_app: Celery, generation_id: str, prediction_id: str) -> str | None:
    """Wake the generation's generate stage if it waits on ``prediction_id``;
    None when sent, else why not (nothing to do: not an error)."""
    with db.read() as session:
        gen = session.get(Generation, generation_id)
        if gen is None or gen.status in FINAL:
            return "no such generation in progress"
        parked = lease.parked(gen.stage(STAGE) if gen.stages else None)
        if not parked:
            return "its generate stage is not waiting"
        if prediction_id not in (parked.get("predictions") or []):
            return "not a prediction its generate stage waits on"
        in_batch = gen.batch_id is not None
        stages = stage_names(gen)
    wake_id = lease.wake_up_task_id()
    if not dispatch(celery_app, generation_id, STAGE, wake_id, background=in_batch, stages=stages):
        raise NotSent(generation_id)
    return None
