"""The generations domain: create, read, list, cancel, retry, delete and the
JSON shape clients see. Functions take the session and never commit."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from .models import Generation, GenerationAsset, GenerationStage, new_id, utcnow
from .pipeline import STAGES
from .states import (
    CANCELED,
    FAILED,
    FINAL,
    PENDING,
    S_FAILED,
    S_PENDING,
    S_RUNNING,
    STAGE_DONE,
    IllegalTransition,
    set_status,
)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat().replace("+00:00", "Z")


def initial_pipeline_data(vlt_spec: dict[str, Any] | None) -> dict[str, Any]:
    return {"input": {"vltSpec": vlt_spec}} if vlt_spec else {}


def create(
    session: Session,
    *,
    user_id: int,
    mode: str,
    settings: dict[str, Any],
    prompt: str | None = None,
    negative_prompt: str | None = None,
    persona_id: str | None = None,
    vlt_spec: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    generation_id: str | None = None,
    input_key: str | None = None,
    dispatched_at: datetime | None = None,
) -> Generation:
    """The generation (its stage rows are written by its first stage's claim:
    see ``stage_list``). ``dispatched_at``: the submit sets
    it in the same insert (the chain is sent right after the commit); see
    ``app.maintenance`` for how a send that never happened is found."""
    gen = Generation(
        id=generation_id or new_id("gen"),
        user_id=user_id,
        status=PENDING,
        mode=mode,
        settings=settings,
        prompt=prompt,
        negative_prompt=negative_prompt,
        persona_id=persona_id,
        input_key=input_key,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        pipeline_data=initial_pipeline_data(vlt_spec),
        dispatched_at=dispatched_at,
    )
    session.add(gen)
    return gen


# A generation's stage rows are written by its first stage's claim (all seven
# at once, ``app.pipeline.runner``), not by the submit: the API inserts one
# row per job instead of eight. Until then every stage is pending, and rows
# read so (a stage without its row is a pending one).
_PENDING_STAGES = {
    name: SimpleNamespace(
        name=name,
        status=S_PENDING,
        started_at=None,
        finished_at=None,
        duration_ms=None,
        attempts=0,
        error=None,
        output=None,
    )
    for name in STAGES
}


def stage_list(stages: Iterable[Any]) -> list[Any]:
    """All seven stages in order: the rows given (ORM objects or Core rows),
    and a pending stand-in for each stage without one."""
    rows = list(stages)
    if len(rows) == len(STAGES):
        return rows
    by_name = {s.name: s for s in rows}
    return [by_name.get(name) or _PENDING_STAGES[name] for name in STAGES]


def stage_status(gen: Generation, name: str) -> str:
    """The status of one of ``gen``'s stages (pending while it has no row)."""
    return next((s.status for s in gen.stages if s.name == name), S_PENDING)


def first_unfinished(gen: Generation) -> str | None:
    """The stage a chain for ``gen`` starts at; None when all are done."""
    done = {s.name for s in gen.stages if s.status in STAGE_DONE}
    return next((name for name in STAGES if name not in done), None)


def clear_dispatched(session: Session, *generation_ids: str) -> None:
    """Their chains were not sent after all: the maintenance dispatcher sends
    generations without ``dispatched_at`` once they are a few seconds old."""
    session.execute(
        update(Generation).where(Generation.id.in_(generation_ids)).values(dispatched_at=None)
    )


def get_owned(
    session: Session, user_id: int, generation_id: str, lock: bool = False
) -> Generation | None:
    q = select(Generation).where(Generation.id == generation_id, Generation.user_id == user_id)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    else:
        # One indexed query (primary key, then the generation_id indexes of
        # both children): at most 7 stages x 4 assets joined rows.
        q = q.options(joinedload(Generation.stages), joinedload(Generation.assets))
    return session.scalars(q).unique().one_or_none()


def encode_cursor(gen: Generation) -> str:
    raw = json.dumps([iso(gen.created_at), gen.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not one of our cursors."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, gid = json.loads(raw)
        dt = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except Exception as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(gid, str):
        raise ValueError("invalid cursor")
    return dt, gid


def list_page(
    session: Session, user_id: int, limit: int, cursor: str | None = None, status: str | None = None
) -> tuple[list[Generation], str | None]:
    q = (
        select(Generation)
        .where(Generation.user_id == user_id)
        .options(selectinload(Generation.stages), selectinload(Generation.assets))
        .order_by(Generation.created_at.desc(), Generation.id.desc())
        .limit(limit + 1)
    )
    if status:
        q = q.where(Generation.status == status)
    if cursor:
        created, gid = decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created = created.replace(tzinfo=None)  # compare like with like
        q = q.where(
            or_(
                Generation.created_at < created,
                and_(Generation.created_at == created, Generation.id < gid),
            )
        )
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def cancel(gen: Generation) -> None:
    """Raises IllegalTransition when the generation is already final (canceling
    a canceled one too: set_status treats same-status as a no-op)."""
    if gen.status in FINAL:
        raise IllegalTransition("generation", gen.status, CANCELED)
    set_status(gen, CANCELED)
    for s in gen.stages:
        if s.status == S_RUNNING:
            s.error = "canceled while running"


def prepare_retry(gen: Generation) -> str:
    """Reset a failed generation to resume at its first unfinished stage; returns it."""
    if gen.status != FAILED:
        raise IllegalTransition("generation", gen.status, PENDING)
    set_status(gen, PENDING)
    for s in gen.stages:
        if s.status in (S_FAILED, S_RUNNING):
            s.status, s.error = S_PENDING, None
        if s.status == S_PENDING:
            s.attempts = 0
    gen.dispatched_at = None
    return first_unfinished(gen) or STAGES[-1]


def to_json(gen: Generation) -> dict[str, Any]:
    data = gen.pipeline_data or {}
    enhance, optimize = data.get("enhance") or {}, data.get("optimize") or {}
    prompts = (
        enhance.get("mainPrompt"),
        optimize.get("finalPrompt"),
        optimize.get("negativePrompt"),
        enhance.get("negativePrompt"),
    )
    return _shape(gen, prompts, gen.stages, gen.assets)


def _shape(
    gen: Any, prompts: tuple[str | None, ...], stages: Iterable[Any], assets: Iterable[Any]
) -> dict[str, Any]:
    """The client's JSON of a generation from anything with the model's attribute
    names (ORM objects or Core rows); ``prompts`` = enhanced, final, and the
    optimised and enhanced negative prompts."""
    enhanced, final, negative_opt, negative_enh = prompts
    return {
        "id": gen.id,
        "status": gen.status,
        "createdAt": iso(gen.created_at),
        "updatedAt": iso(gen.updated_at),
        "completedAt": iso(gen.completed_at),
        "mode": gen.mode,
        "settings": gen.settings,
        "provider": gen.provider,
        "model": gen.model,
        "personaId": gen.persona_id,
        "prompt": {
            "original": gen.prompt,
            "enhanced": enhanced,
            "final": final,
            "negative": negative_opt or negative_enh or gen.negative_prompt,
        },
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "startedAt": iso(s.started_at),
                "finishedAt": iso(s.finished_at),
                "durationMs": s.duration_ms,
                "attempts": s.attempts,
                "error": s.error,
                "output": s.output,
            }
            for s in stage_list(stages)
        ],
        "assets": [
            {
                "id": a.id,
                "url": a.cdn_url,
                "width": a.width,
                "height": a.height,
                "contentType": a.content_type,
                "fileSize": a.file_size,
            }
            for a in assets
        ],
        "cost": float(gen.cost or 0),
        "error": {"stage": gen.error_stage, "message": gen.error_message}
        if gen.error_message
        else None,
        "webhookUrl": gen.webhook_url,
        "links": {"self": f"/api/generate/{gen.id}"},
    }


_G, _S, _A = Generation.__table__, GenerationStage.__table__, GenerationAsset.__table__
_GEN_COLS = [
    _G.c[n]
    for n in (
        "id", "status", "created_at", "updated_at", "completed_at", "mode", "settings",
        "provider", "model", "persona_id", "prompt", "negative_prompt", "cost",
        "error_stage", "error_message", "webhook_url",
    )
]  # fmt: skip
# Only the four prompts the client sees, extracted by the database: the whole
# pipeline_data (every stage's output) is not decoded once per joined row.
_PROMPT_COLS = [
    _G.c.pipeline_data[path].as_string().label(f"p{i}")
    for i, path in enumerate(
        (
            ("enhance", "mainPrompt"),
            ("optimize", "finalPrompt"),
            ("optimize", "negativePrompt"),
            ("enhance", "negativePrompt"),
        )
    )
]
_STAGE_COLS = (
    "name",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "attempts",
    "error",
    "output",
)
_ASSET_COLS = ("id", "cdn_url", "width", "height", "content_type", "file_size")
_READ = (
    select(
        *_GEN_COLS,
        *_PROMPT_COLS,
        _S.c.position.label("s_position"),
        *(_S.c[n].label(f"s_{n}") for n in _STAGE_COLS),
        _A.c.position.label("a_position"),
        *(_A.c[n].label(f"a_{n}") for n in _ASSET_COLS),
    )
    .select_from(
        _G.outerjoin(_S, _S.c.generation_id == _G.c.id).outerjoin(_A, _A.c.generation_id == _G.c.id)
    )
    .where(_G.c.id == bindparam("generation_id"), _G.c.user_id == bindparam("user_id"))
    .order_by(_S.c.position, _A.c.position)
)  # built once: its compiled form and cache key are reused by every call


def read_owned_json(session: Session, user_id: int, generation_id: str) -> dict[str, Any] | None:
    """``to_json`` of an owned generation in one statement, without the ORM
    (the status read clients poll): the primary key and both children's
    generation_id indexes, one row per stage x asset."""
    rows = session.execute(_READ, {"generation_id": generation_id, "user_id": user_id}).all()
    if not rows:
        return None
    stages: dict[int, SimpleNamespace] = {}
    assets: dict[int, SimpleNamespace] = {}
    for r in rows:
        m = r._mapping
        if r.s_position is not None and r.s_position not in stages:
            stages[r.s_position] = SimpleNamespace(**{n: m[f"s_{n}"] for n in _STAGE_COLS})
        if r.a_position is not None and r.a_position not in assets:
            assets[r.a_position] = SimpleNamespace(**{n: m[f"a_{n}"] for n in _ASSET_COLS})
    first = rows[0]
    return _shape(
        first,
        (first.p0, first.p1, first.p2, first.p3),
        stages.values(),
        (assets[k] for k in sorted(assets)),
    )


def is_final(gen: Generation) -> bool:
    return gen.status in FINAL


def touch_dispatched(session: Session, generation_id: str) -> None:
    session.execute(
        update(Generation).where(Generation.id == generation_id).values(dispatched_at=utcnow())
    )
