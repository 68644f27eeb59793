"""The operator's and account's answers: ``/health``, ``/api/stats`` and the
webhook secret (the generation's answers are in ``responses``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.api.responses import Out


class HealthChecks(Out):
    database: str
    broker: str
    storage: str


class ProviderKeyOut(Out):
    configured: bool
    verified: bool | None = Field(description="the key worked in a free call (null: not asked)")
    detail: str


class HealthOut(Out):
    status: Literal["ok", "degraded"]
    checks: HealthChecks
    storage_backend: Literal["s3", "local"]
    providers: dict[str, ProviderKeyOut]


class StatsCounts(Out):
    completed: int
    failed: int
    canceled: int
    in_progress: int = Field(serialization_alias="in_progress")  # the view's column name
    total: int


class StageDuration(Out):
    avg: float
    count: int


class DayCost(Out):
    day: str
    by_provider: dict[str, float]
    total: float


class TableCost(Out):
    table: str  # the price table the costs were computed with (app/providers/prices.toml)
    cost: float


class StatsOut(Out):
    counts: StatsCounts
    success_rate: float | None
    assets: int
    total_cost: float
    avg_duration_seconds: float | None
    stage_durations_ms: dict[str, StageDuration]
    cost_by_day: list[DayCost]
    cost_by_price_table: list[TableCost]


class WebhookSecretOut(Out):
    secret: str = Field(pattern="^whsec_")
