"""The generations domain: create, read, list, cancel, retry and delete
(the JSON shape clients see: ``app.api.responses``). Functions take the
session and never commit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, select, update
from sqlalchemy.orm import Session, defer, joinedload, selectinload

from app.domain import paging, spend
from app.domain.models import (
    Generation,
    GenerationAsset,
    GenerationFeedback,
    GenerationStage,
    new_id,
    utcnow,
)
from app.domain.states import (
    CANCELED,
    COMPLETED,
    FAILED,
    FINAL,
    LATE_REQUEST,
    LATE_STAGE,
    PENDING,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    STAGE_DONE,
    WAITING,
    IllegalTransition,
    clear_holds,
    set_stage_status,
    set_status,
)
from app.pipeline import ALL_STAGES, stages_for
from app.platform.db import begin_for_update

# A completed generation with a refine asked for after the fact, not yet done
# (found through the partial index ix_generation_stages_open_refine).
OPEN_LATE_REFINE = and_(
    Generation.status == COMPLETED,
    exists().where(
        GenerationStage.generation_id == Generation.id,
        GenerationStage.name == LATE_STAGE,
        GenerationStage.status.in_((S_PENDING, S_RUNNING)),
    ),
)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.isoformat().replace("+00:00", "Z")


def create(
    session: Session,
    *,
    vlt_spec: dict[str, Any] | None = None,
    generation_id: str | None = None,
    **columns: Any,
) -> Generation:
    """A pending generation with ``columns`` (user_id, mode, settings, prompt,
    …). Its stage rows are written by its first claim; until then
    its JSON shows its pending stages (``stages_for``). The submit sets
    ``dispatched_at`` in the same insert (see ``app.pipeline.maintenance`` for
    how a send that never happened is found)."""
    gen = Generation(
        id=generation_id or new_id("gen"),
        status=PENDING,
        pipeline_data={"input": {"vltSpec": vlt_spec}} if vlt_spec else {},
        **columns,
    )
    session.add(gen)
    return gen


def new_stages(gen: Generation | None = None) -> list[GenerationStage]:
    """A new generation's stage rows: all pending, in pipeline order (with
    ``refine`` when its settings ask for it)."""
    names = stages_for(gen.settings if gen is not None else None)
    return [new_stage(name) for name in names]


def new_stage(name: str) -> GenerationStage:
    return GenerationStage(name=name, position=ALL_STAGES.index(name), status=S_PENDING, attempts=0)


def stage_names(gen: Generation) -> tuple[str, ...]:
    """The stages this generation runs, in order: its chain."""
    return tuple(s.name for s in gen.stages) if gen.stages else stages_for(gen.settings)


def stage_status(gen: Generation, name: str) -> str:
    """The status of one of ``gen``'s stages (pending while it has no row)."""
    return next((s.status for s in gen.stages if s.name == name), S_PENDING)


def first_unfinished(gen: Generation) -> str | None:
    """The stage a chain for ``gen`` starts at; None when all are done."""
    done = {s.name for s in gen.stages if s.status in STAGE_DONE}
    return next((name for name in stage_names(gen) if name not in done), None)


def clear_dispatched(session: Session, *generation_ids: str) -> None:
    """Their chains were not sent after all: the maintenance dispatcher sends
    generations without ``dispatched_at`` once they are a few seconds old."""
    session.execute(
        update(Generation).where(Generation.id.in_(generation_ids)).values(dispatched_at=None)
    )


def get_owned(
    session: Session, user_id: int, generation_id: str, lock: bool = False
) -> Generation | None:
    if lock:
        begin_for_update(session)
        q = (
            select(Generation)
            .where(Generation.id == generation_id, Generation.user_id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return session.scalars(q).one_or_none()
    params = {"generation_id": generation_id, "user_id": user_id}
    return session.scalars(SHOW, params).unique().one_or_none()


# What clients see of one generation, in one indexed query (primary key, then
# the generation_id indexes of the children: its 7 or 8 stages x its assets
# (originals and refined variants) x up to 3 standing feedback rows joined),
# with only the columns the answer shows (the rest load if asked for: each
# column costs the driver a description on every execution). Built once, so its cache key is too.
SHOW = (
    select(Generation)
    .where(Generation.id == bindparam("generation_id"), Generation.user_id == bindparam("user_id"))
    .options(
        *(
            defer(column)
            for column in (
                Generation.user_id,
                Generation.input_key,
                Generation.pipeline_data,
                Generation.idempotency_key,
                Generation.request_hash,
                Generation.dispatched_at,
                Generation.deadline_at,
            )
        ),
        joinedload(Generation.stages).load_only(
            GenerationStage.name,
            GenerationStage.status,
            GenerationStage.attempts,
            GenerationStage.started_at,
            GenerationStage.finished_at,
            GenerationStage.duration_ms,
            GenerationStage.output,
            GenerationStage.error,
        ),
        joinedload(Generation.assets).load_only(
            GenerationAsset.id,
            GenerationAsset.r2_key,
            GenerationAsset.width,
            GenerationAsset.height,
            GenerationAsset.content_type,
            GenerationAsset.file_size,
            GenerationAsset.variant,
            GenerationAsset.source_asset_id,
        ),
        joinedload(Generation.standing_feedback).load_only(
            GenerationFeedback.feedback_type, GenerationFeedback.rating
        ),
    )
)


CURSOR_PATTERN = paging.cursor_pattern("gen")


def list_page(
    session: Session,
    user_id: int,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    batch_id: str | None = None,
) -> tuple[list[Generation], str | None]:
    q = (
        select(Generation)
        .where(Generation.user_id == user_id)
        .options(
            selectinload(Generation.stages),
            selectinload(Generation.assets),
            selectinload(Generation.standing_feedback),
        )
    )
    if status:
        q = q.where(Generation.status == status)
    if batch_id:
        q = q.where(Generation.batch_id == batch_id)
    return paging.page(session, q, Generation, limit, cursor, CURSOR_PATTERN)


def cancel(gen: Generation) -> None:
    """Raises IllegalTransition when the generation is already final (canceling
    a canceled one too: set_status treats same-status as a no-op)."""
    if gen.status in FINAL:
        raise IllegalTransition("generation", gen.status, CANCELED)
    set_status(gen, CANCELED)
    spend.release(gen)  # a stage that finishes paying yet records its cost
    for s in gen.stages:
        if s.status == S_RUNNING:
            s.error = "canceled while running"
            if (s.output or {}).get(WAITING):  # parked: no copy works on it to end it
                give_up_canceled(s)


def give_up_canceled(stage: GenerationStage) -> None:
    """Fail a running stage of a canceled generation whose work was given up
    (parked on a provider, or its copy stopped at a checkpoint): nothing else
    would end it, and it would show running for ever."""
    set_stage_status(stage, S_FAILED)
    stage.error, stage.finished_at = "canceled while running", utcnow()
    stage.duration_ms = elapsed_ms(stage)


def end_late_refine(gen: Generation, why: str) -> None:
    """Fail a completed generation's refine asked for afterwards, its copies
    fenced off: no task id owns it (a working copy stops at its next
    checkpoint, before paying), and a parked one's countdown finds it failed."""
    stage = gen.stage(LATE_STAGE)
    set_stage_status(stage, S_FAILED)
    stage.error, stage.finished_at, stage.task_id = why, utcnow(), None
    stage.duration_ms = elapsed_ms(stage)


def elapsed_ms(stage: GenerationStage) -> int | None:
    """How long the stage has run, in ms (None: it never started)."""
    if stage.started_at is None:
        return None
    return max(0, round((utcnow() - stage.started_at).total_seconds() * 1000))


def prepare_retry(gen: Generation, timeout: float) -> str:
    """Reset a failed generation to resume at its first unfinished stage
    within ``timeout`` seconds; returns that stage."""
    if gen.status != FAILED:
        raise IllegalTransition("generation", gen.status, PENDING)
    set_status(gen, PENDING)
    gen.deadline_at = utcnow() + timedelta(seconds=timeout)
    for s in gen.stages:
        if s.status in (S_FAILED, S_RUNNING):
            s.status, s.error = S_PENDING, None
        if s.status == S_PENDING:
            s.attempts = 0
            clear_holds(s)
    gen.dispatched_at = None
    return first_unfinished(gen) or stage_names(gen)[-1]


def touch_dispatched(session: Session, generation_id: str) -> None:
    session.execute(
        update(Generation).where(Generation.id == generation_id).values(dispatched_at=utcnow())
    )


def late_refine_overdue(gen: Generation, asked_before: datetime) -> bool:
    """Its refine asked for after the fact was asked for before ``asked_before``
    (a request from before ``askedAt`` was kept: its stage's start, else the
    generation's last change)."""
    asked = ((gen.pipeline_data or {}).get(LATE_REQUEST) or {}).get("askedAt")
    try:
        when = datetime.fromisoformat(asked) if asked else None
    except (TypeError, ValueError):
        when = None
    if when is None:
        stage = next((s for s in gen.stages if s.name == LATE_STAGE), None)
        when = (stage.started_at if stage else None) or gen.updated_at
    return when is not None and when < asked_before
