"""The reads behind ``/api/stats``' Insights fields: one query each, the
caller's rows only, each reached through an index (EXPLAIN on PostgreSQL):

- stage durations: ``generations`` by ``ix_generations_user_created``, their
  stages by ``uq_generation_stage`` (generation_id, name);
- failures by stage: ``generations`` by ``ix_generations_user_created``;
- images per persona: the same, then ``uq_generation_stage`` for the persona
  stage, ``uq_asset_position`` for the images, ``personas`` by primary key;
- images and refined variants: the same generations, then ``uq_asset_position``;
- learnt terms: ``prompt_token_scores`` by its primary key (user_id, token);
- most-hearted images: ``generation_feedback`` by ``ix_generation_feedback_user_id``,
  then assets and generations by primary key.

The same SQL runs on SQLite and PostgreSQL (window functions, no
``percentile_cont``). Functions take the session and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.domain.models import (
    Generation,
    GenerationAsset,
    GenerationFeedback,
    GenerationStage,
    Persona,
    PromptTokenScore,
    User,
)
from app.pipeline.optimize import BAD, GOOD
from app.pipeline.subject import subject_of
from app.platform.storage import current_public_base, public_url

TERMS = 10  # learnt terms shown at each end
HEARTED = 12  # most-hearted images shown


def daily_cap(session: Session, user_id: int) -> float | None:
    cap = session.scalar(select(User.daily_spend_cap).where(User.id == user_id))
    return None if cap is None else round(float(cap), 4)


def _rank_at(rank: Any, n: Any, ms: Any, fraction: float) -> Any:
    """Nearest-rank percentile: the smallest duration ranked at or past fraction x n."""
    return func.min(case((rank >= n * fraction, ms)))


def stage_durations(session: Session, user_id: int) -> dict[str, dict[str, Any]]:
    """Per stage, over the user's completed stage runs: average, count, p50, p95 (ms)."""
    s = GenerationStage
    ms = s.duration_ms
    by_stage = {"partition_by": s.name}
    runs = (
        select(
            s.name,
            ms.label("ms"),
            # NULLs last on both dialects, so ranks count only measured runs.
            func.row_number().over(order_by=(ms.is_(None), ms), **by_stage).label("rank"),
            func.count(ms).over(**by_stage).label("n"),
        )
        .join(Generation, Generation.id == s.generation_id)
        .where(Generation.user_id == user_id, s.status == "completed")
        .subquery()
    )
    rank, n, ms_ = runs.c.rank, runs.c.n, runs.c.ms
    rows = session.execute(
        select(
            runs.c.name,
            func.avg(ms_),
            func.count(),
            _rank_at(rank, n, ms_, 0.5),
            _rank_at(rank, n, ms_, 0.95),
        ).group_by(runs.c.name)
    )
    return {
        name: {"avg": _ms(avg) or 0.0, "count": count, "p50": _ms(p50), "p95": _ms(p95)}
        for name, avg, count, p50, p95 in rows
    }


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def failures_by_stage(session: Session, user_id: int) -> dict[str, int]:
    """Failed generations by the stage they failed at (``unknown`` if none was recorded)."""
    g = Generation
    rows = session.execute(
        select(g.error_stage, func.count())
        .where(g.user_id == user_id, g.status == "failed")
        .group_by(g.error_stage)
    )
    return {stage or "unknown": n for stage, n in rows}


def images_by_persona(session: Session, user_id: int) -> list[dict[str, Any]]:
    """Images per persona the ``persona`` stage actually blended in (not the
    one asked for: it may not have matched); ``personaId`` null: none. Only
    what ``generate`` made: a refine's variant is not another image."""
    g, s, a, p = Generation, GenerationStage, GenerationAsset, Persona
    used = s.output["personaId"].as_string()
    rows = session.execute(
        select(used, p.name, func.count(a.id))
        .select_from(g)
        .join(a, a.generation_id == g.id)
        .outerjoin(s, (s.generation_id == g.id) & (s.name == "persona"))
        .outerjoin(p, p.id == used)
        .where(g.user_id == user_id, a.variant == "original")
        .group_by(used, p.name)
        .order_by(func.count(a.id).desc())
    )
    return [
        {
            "persona_id": pid,
            "name": name or ("no persona" if pid is None else "a deleted persona"),
            "images": images,
        }
        for pid, name, images in rows
    ]


def images_and_variants(session: Session, user_id: int) -> tuple[int, int]:
    """The images ``generate`` made, and the variants refine made of them:
    the page's Images tile counts what its persona chart counts."""
    g, a = Generation, GenerationAsset
    original = case((a.variant == "original", 1), else_=0)
    images, stored = session.execute(
        select(func.coalesce(func.sum(original), 0), func.count(a.id))
        .select_from(g)
        .join(a, a.generation_id == g.id)
        .where(g.user_id == user_id)
    ).one()
    return int(images), int(stored) - int(images)


def learnt_terms(session: Session, user_id: int) -> dict[str, Any]:
    """The user's best and worst scored prompt terms (those feedback has
    moved): ``top`` best first, ``bottom`` worst first, no term in both."""
    t = PromptTokenScore
    ranked = (
        select(
            t.token,
            t.score,
            t.uses,
            func.row_number().over(order_by=(t.score.desc(), t.token)).label("best"),
            func.row_number().over(order_by=(t.score, t.token)).label("worst"),
        )
        .where(t.user_id == user_id, t.uses > 0)
        .subquery()
    )
    rows = session.execute(
        select(ranked).where((ranked.c.best <= TERMS) | (ranked.c.worst <= TERMS))
    ).all()
    return {
        "top": [_term(r) for r in sorted(rows, key=lambda r: r.best) if r.best <= TERMS],
        "bottom": [
            _term(r) for r in sorted(rows, key=lambda r: r.worst) if r.best > TERMS >= r.worst
        ],
        "good": GOOD,
        "bad": BAD,
    }


def _term(row: Any) -> dict[str, Any]:
    """A term, and whether it names what is asked for (a garment, colour,
    material, ...): the optimiser never sends such a term to the negative
    prompt, nor adds it to a prompt that names another (``optimize``)."""
    score = round(float(row.score), 4)
    return {
        "token": row.token,
        "score": score,
        "uses": row.uses,
        "subject": bool(subject_of(row.token)),
    }


def most_hearted(session: Session, user_id: int) -> list[dict[str, Any]]:
    """The user's images with the most standing hearts, latest heart first on
    a tie; a heart that named no image counts for the generation's first.
    URLs on the running app's storage base (an app context), not ``cdn_url``."""
    f, a, g = GenerationFeedback, GenerationAsset, Generation
    first = (
        select(a.id).where(a.generation_id == f.generation_id, a.position == 0).scalar_subquery()
    )
    hearts = (
        select(func.coalesce(f.asset_id, first).label("asset_id"), f.created_at)
        .where(f.user_id == user_id, f.feedback_type == "heart", f.removed_at.is_(None))
        .subquery()
    )
    top = (
        select(
            hearts.c.asset_id,
            func.count().label("hearts"),
            func.max(hearts.c.created_at).label("last"),
        )
        .group_by(hearts.c.asset_id)
        .subquery()
    )
    rows = session.execute(
        select(a.id, a.generation_id, a.r2_key, a.width, a.height, g.prompt, top.c.hearts)
        .select_from(top)
        .join(a, a.id == top.c.asset_id)
        .join(g, (g.id == a.generation_id) & (g.user_id == user_id))
        .order_by(top.c.hearts.desc(), top.c.last.desc(), a.id.desc())
        .limit(HEARTED)
    )
    base = current_public_base()
    return [
        {
            "asset_id": asset_id,
            "generation_id": gen_id,
            "url": public_url(base, key),
            "width": width,
            "height": height,
            "prompt": prompt,
            "hearts": n,
        }
        for asset_id, gen_id, key, width, height, prompt, n in rows
    ]
