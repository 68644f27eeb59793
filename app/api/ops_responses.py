"""The operator's and account's answers: ``/health``, ``/api/stats`` and the
webhook secret (the generation's answers are in ``responses``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.api.responses import Out


def _string_or_absent(schema: dict) -> None:
    """A field sent as a string, or left out: never null, so no default."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema["type"] = "string"


class HealthChecks(Out):
    database: str
    broker: str
    storage: str
    redis: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        json_schema_extra=_string_or_absent,
        description="only when REDIS_URL is set and CELERY_BROKER_URL names another broker",
    )


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
    in_progress: int
    total: int


class StageDuration(Out):
    avg: float
    count: int
    p50: float | None = Field(description="median, ms (nearest rank); null: none measured")
    p95: float | None = Field(description="95th percentile, ms (nearest rank)")


class DayCost(Out):
    """What was paid on a UTC day (the day the daily cap counts it), deleted
    generations and refines of older ones included."""

    day: str
    by_provider: dict[str, float] = Field(description="USD by who was paid")
    total: float


class TableCost(Out):
    table: str  # the price table the costs were computed with (app/providers/prices.toml)
    cost: float


class PersonaImages(Out):
    persona_id: str | None = Field(description="null: no persona was blended in")
    name: str
    images: int


class TermScore(Out):
    token: str
    # 0 to 1, but unbounded here: an undone step may land a rounding error outside.
    score: float = Field(description="0 (disliked) to 1 (liked); every term starts at 0.5")
    uses: int = Field(description="standing feedback rows that moved it")
    subject: bool = Field(
        description="names what is asked for (a garment, colour, material, pattern or detail):"
        " never sent to the negative prompt, nor added to a prompt naming another"
    )


class LearntTerms(Out):
    """The optimiser's per-user prompt terms (app/pipeline/optimize.py)."""

    top: list[TermScore] = Field(description="best first")
    bottom: list[TermScore] = Field(description="worst first; none of them in top")
    good: float = Field(description="terms scoring at least this are added to prompts")
    bad: float = Field(description="terms scoring below this go to the negative prompt")


class HeartedImage(Out):
    asset_id: int
    generation_id: str
    url: str
    width: int
    height: int
    prompt: str | None
    hearts: int


class StatsOut(Out):
    counts: StatsCounts
    success_rate: float | None
    assets: int = Field(description="every stored image: images + variants")
    images: int = Field(description="images generate made (as imagesByPersona counts them)")
    variants: int = Field(description="upscaled and cut-out variants refine made of them")
    total_cost: float = Field(description="USD paid, as costByDay adds up")
    avg_duration_seconds: float | None
    stage_durations_ms: dict[str, StageDuration]
    cost_by_day: list[DayCost]
    cost_by_price_table: list[TableCost]
    daily_cap: float | None = Field(description="USD a UTC day may cost; null: no cap")
    failures_by_stage: dict[str, int] = Field(description="failed generations by failing stage")
    images_by_persona: list[PersonaImages]
    learnt_terms: LearntTerms
    most_hearted: list[HeartedImage] = Field(description="most hearts first, at most 12")


class WebhookSecretOut(Out):
    secret: str = Field(pattern="^whsec_")
