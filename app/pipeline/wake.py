"""Waking a stage that waits on a provider, when the provider says it is done
(a Replicate webhook): send the stage now instead of at its countdown.

Only a stage parked on that very prediction is woken. The woken run still
looks at the prediction itself (one GET): the notice says "look now", never
what the result is, so results come one way only.
"""

from __future__ import annotations

from celery import Celery

from app.domain.generations import stage_names
from app.domain.models import Generation, GenerationStage
from app.domain.states import ended_for
from app.pipeline import lease
from app.platform.db import Database
from app.platform.queue import dispatch
from app.providers.base import prediction_ids

# The stages that park on Replicate predictions. generate saves a list of
# ids, refine a mapping of variant -> id.
WAITING_STAGES = ("generate", "refine")


class NotSent(Exception):
    """The broker could not take the wake-up (the countdown look still comes)."""


def _waits_on(stage: GenerationStage, prediction_id: str) -> bool:
    return prediction_id in prediction_ids(lease.parked(stage))


def wake(db: Database, celery_app: Celery, generation_id: str, prediction_id: str) -> str | None:
    """Wake the generation's stage parked on ``prediction_id`` (generate, or
    refine); None when sent, else why not (nothing to do: not an error)."""
    with db.read() as session:
        gen = session.get(Generation, generation_id)
        if gen is None:
            return "no such generation"
        waiting = [
            s for s in gen.stages if s.name in WAITING_STAGES and _waits_on(s, prediction_id)
        ]
        if not waiting:
            return "no stage of it waits on this prediction"
        stage = waiting[0].name
        if ended_for(gen, stage):  # a completed generation's late refine still runs
            return "the generation has ended"
        in_batch = gen.batch_id is not None
        stages = stage_names(gen)
    wake_id = lease.wake_up_task_id()
    if not dispatch(celery_app, generation_id, stage, wake_id, background=in_batch, stages=stages):
        raise NotSent(generation_id)
    return None
