"""/api/stats and /api/webhooks/secret: things about the caller."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, g
from sqlalchemy import func, select, text

from app.api.auth import load_user
from app.api.common import services
from app.api.responses import StatsOut, WebhookSecretOut, respond
from app.domain.models import Generation, GenerationStage, User
from app.webhooks import ensure_secret

bp = Blueprint("account", __name__, url_prefix="/api")
bp.before_request(load_user)


@bp.get("/stats")
def stats():
    with services().db.session() as session:
        row = (
            session.execute(
                text(
                    "SELECT total_generations, completed, failed, canceled, in_progress,"
                    " total_assets, total_cost, avg_duration_seconds"
                    " FROM user_generation_stats WHERE user_id = :u"
                ),
                {"u": g.user_id},
            )
            .mappings()
            .one_or_none()
            or {}
        )
        stages = session.execute(
            select(GenerationStage.name, func.avg(GenerationStage.duration_ms), func.count())
            .join(Generation, Generation.id == GenerationStage.generation_id)
            .where(Generation.user_id == g.user_id, GenerationStage.status == "completed")
            .group_by(GenerationStage.name)
        ).all()
        by_day: dict[str, dict[str, float]] = defaultdict(dict)
        for day, provider, cost, _count in session.execute(
            text(
                "SELECT created_day, provider, SUM(cost), COUNT(*) FROM generation_summary "
                "WHERE user_id = :u AND provider IS NOT NULL GROUP BY created_day, provider "
                "ORDER BY created_day"
            ),
            {"u": g.user_id},
        ):
            by_day[str(day)][provider] = round(float(cost or 0), 4)
        table = GenerationStage.output["priceTable"].as_string()
        by_table = session.execute(
            select(table, func.sum(Generation.cost))
            .join(Generation, Generation.id == GenerationStage.generation_id)
            .where(Generation.user_id == g.user_id, GenerationStage.name == "generate")
            .where(GenerationStage.status == "completed")
            .group_by(table)
        ).all()
    total = int(row.get("total_generations") or 0)
    completed = int(row.get("completed") or 0)
    finished = completed + int(row.get("failed") or 0)
    return respond(
        StatsOut,
        {
            "counts": {
                k: int(row.get(k) or 0) for k in ("completed", "failed", "canceled", "in_progress")
            }
            | {"total": total},
            "success_rate": round(completed / finished, 4) if finished else None,
            "assets": int(row.get("total_assets") or 0),
            "total_cost": round(float(row.get("total_cost") or 0), 4),
            "avg_duration_seconds": round(float(row["avg_duration_seconds"]), 3)
            if row.get("avg_duration_seconds") is not None
            else None,
            "stage_durations_ms": {
                name: {"avg": round(float(avg or 0), 1), "count": n} for name, avg, n in stages
            },
            "cost_by_price_table": [
                {"table": name or "before price tables were recorded", "cost": round(float(c), 4)}
                for name, c in by_table
            ],
            "cost_by_day": [
                {"day": d, "by_provider": p, "total": round(sum(p.values()), 4)}
                for d, p in by_day.items()
            ],
        },
    )


@bp.get("/webhooks/secret")
def webhook_secret():
    with services().db.session() as session:
        return respond(WebhookSecretOut, {"secret": ensure_secret(session.get(User, g.user_id))})
