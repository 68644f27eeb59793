"""/api/stats and /api/webhooks/secret: things about the caller."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, g
from sqlalchemy import func, select, text

from app.api.auth import load_user
from app.api.common import services
from app.api.ops_responses import StatsOut, WebhookSecretOut
from app.api.responses import respond
from app.domain import insights, spend
from app.domain.models import Generation, GenerationStage, User
from app.webhooks import ensure_secret

bp = Blueprint("account", __name__, url_prefix="/api")
bp.before_request(load_user)


TOTALS = text(
    "SELECT total_generations, completed, failed, canceled, in_progress, total_assets,"
    " total_cost, avg_duration_seconds FROM user_generation_stats WHERE user_id = :u"
)
COUNTS = ("total_generations", "completed", "failed", "canceled", "in_progress", "total_assets")


@bp.get("/stats")
def stats():
    stage = GenerationStage
    mine = (Generation.id == stage.generation_id) & (Generation.user_id == g.user_id)
    table = stage.output["priceTable"].as_string()
    with services().db.session() as session:
        row = session.execute(TOTALS, {"u": g.user_id}).mappings().one_or_none() or {}
        stages = insights.stage_durations(session, g.user_id)
        paid = spend.paid_total(session, g.user_id)  # as the days below: the ledger
        by_day: dict[str, dict[str, float]] = defaultdict(dict)
        for day, provider, cost in session.execute(spend.paid_by_day(session, g.user_id)):
            by_day[str(day)][provider] = round(float(cost or 0), 4)
        by_table = session.execute(
            select(table, func.sum(Generation.cost))
            .join(Generation, mine)
            .where(stage.name == "generate", stage.status == "completed")
            .group_by(table)
        ).all()
        images, variants = insights.images_and_variants(session, g.user_id)
        extra = {
            "images": images,
            "variants": variants,
            "daily_cap": insights.daily_cap(session, g.user_id),
            "failures_by_stage": insights.failures_by_stage(session, g.user_id),
            "images_by_persona": insights.images_by_persona(session, g.user_id),
            "learnt_terms": insights.learnt_terms(session, g.user_id),
            "most_hearted": insights.most_hearted(session, g.user_id),
        }
    counts = {k: int(row.get(k) or 0) for k in COUNTS}
    finished = counts["completed"] + counts["failed"]
    avg = row.get("avg_duration_seconds")
    return respond(
        StatsOut,
        {
            "counts": {k: counts[k] for k in COUNTS[1:5]} | {"total": counts["total_generations"]},
            "success_rate": round(counts["completed"] / finished, 4) if finished else None,
            "assets": counts["total_assets"],
            "total_cost": round(paid, 4),
            "avg_duration_seconds": None if avg is None else round(float(avg), 3),
            "stage_durations_ms": stages,
            "cost_by_price_table": [
                {"table": name or "before price tables were recorded", "cost": round(float(c), 4)}
                for name, c in by_table
            ],
            "cost_by_day": [
                {"day": d, "by_provider": p, "total": round(sum(p.values()), 4)}
                for d, p in by_day.items()
            ],
        }
        | extra,
    )


@bp.get("/webhooks/secret")
def webhook_secret():
    with services().db.session() as session:
        return respond(WebhookSecretOut, {"secret": ensure_secret(session.get(User, g.user_id))})
