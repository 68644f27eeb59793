"""Typed SQLAlchemy 2.0 models. Table and column names are a contract
(ARCHITECTURE.md, "Database"); the Alembic migrations create them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    and_,
    or_,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.platform.db import UtcDateTime

# A refine stage not ended yet (the migration 0012's partial index holds these).
OPEN_REFINE = "name = 'refine' AND status IN ('pending', 'running')"
HELD = text("cost_held > 0")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """``prefix_`` and 24 hex digits (96 random bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(80))
    daily_spend_cap: Mapped[Decimal | None] = mapped_column(Numeric(10, 4))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    user: Mapped[User] = relationship()


class Batch(Base):
    """One ``POST /api/batches``: its generations carry its id. The status is
    derived from theirs (``app.domain.batches``)."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_batches_idempotency"),
        Index("ix_batches_user_created", "user_id", "created_at", "id"),
        Index("ix_batches_finished", "finished_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    total: Mapped[int] = mapped_column(Integer)
    estimated_cost: Mapped[Decimal] = mapped_column(Numeric(10, 4), default=Decimal("0"))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    canceled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Every generation final, the completion webhook recorded (once).
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_generations_idempotency"),
        Index("ix_generations_user_created", "user_id", "created_at", "id"),
        Index("ix_generations_status_updated", "status", "updated_at"),
        Index("ix_generations_batch", "batch_id"),
        # The few holding money against the daily cap (``spend.SPENT``).
        Index("ix_generations_holding", "user_id", postgresql_where=HELD, sqlite_where=HELD),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE", name="fk_generations_batch")
    )
    status: Mapped[str] = mapped_column(String(20), default="pending")
    mode: Mapped[str] = mapped_column(String(10))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prompt: Mapped[str | None] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    persona_id: Mapped[str | None] = mapped_column(String(40))
    input_key: Mapped[str | None] = mapped_column(String(300))
    provider: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str | None] = mapped_column(String(80))
    cost: Mapped[Decimal] = mapped_column(Numeric(10, 4), default=Decimal("0"))
    # Held against the daily cap while a stage pays (``spend.hold``); 0 otherwise.
    cost_held: Mapped[Decimal] = mapped_column(
        Numeric(10, 4), default=Decimal("0"), server_default="0"
    )
    pipeline_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_stage: Mapped[str | None] = mapped_column(String(20))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(40))  # e.g. "timeout"
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Not final by then: failed with code "timeout" (BFF_GENERATION_TIMEOUT).
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    stages: Mapped[list[GenerationStage]] = relationship(
        order_by="GenerationStage.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    assets: Mapped[list[GenerationAsset]] = relationship(
        order_by="GenerationAsset.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    # The owner's standing heart, outlier and rating (``app.domain.feedback``).
    standing_feedback: Mapped[list[GenerationFeedback]] = relationship(
        primaryjoin=lambda: standing_feedback(), order_by="GenerationFeedback.id", viewonly=True
    )

    def stage(self, name: str) -> GenerationStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


class GenerationStage(Base):
    """One row per stage per generation: the per-stage record."""

    __tablename__ = "generation_stages"
    __table_args__ = (
        UniqueConstraint("generation_id", "name", name="uq_generation_stage"),
        # The maintenance beat's look for open refines (a handful of rows).
        Index(
            "ix_generation_stages_open_refine",
            "generation_id",
            postgresql_where=text(OPEN_REFINE),
            sqlite_where=text(OPEN_REFINE),
        ),
        # What finished since the metrics' rollup (``metric_rollup``).
        Index("ix_generation_stages_finished", "finished_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Looked up through the unique constraint's index (generation_id first).
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(20))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))


class GenerationAsset(Base):
    __tablename__ = "generation_assets"
    __table_args__ = (UniqueConstraint("generation_id", "position", name="uq_asset_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Looked up through the unique constraint's index (generation_id first).
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    r2_key: Mapped[str] = mapped_column(String(400))
    cdn_url: Mapped[str] = mapped_column(String(2000))
    asset_type: Mapped[str] = mapped_column(String(20), default="image")
    content_type: Mapped[str] = mapped_column(String(60), default="image/png")
    file_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    provider_id: Mapped[str | None] = mapped_column(String(40))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # original (what generate made), upscaled or cutout (made from source_asset_id by refine)
    variant: Mapped[str] = mapped_column(String(20), default="original")
    source_asset_id: Mapped[int | None] = mapped_column(
        ForeignKey("generation_assets.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class GenerationFeedback(Base):
    __tablename__ = "generation_feedback"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_generation_feedback_idempotency"),
        UniqueConstraint(
            "user_id",
            "withdrawal_idempotency_key",
            name="uq_generation_feedback_withdrawal_idempotency",
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[str] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), index=True
    )
    asset_id: Mapped[int | None] = mapped_column(
        ForeignKey("generation_assets.id", ondelete="SET NULL")
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    feedback_type: Mapped[str] = mapped_column(String(20))
    rating: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The learner applies a row once and, once it is withdrawn (a second heart,
    # a new rating), undoes it once; undone_at is also set when it moved nothing.
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    undone_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The Idempotency-Key of the request that made this row, and of the one
    # that withdrew it (a second heart or outlier answers about the row it
    # withdrew): a retry of either answers again instead of toggling again.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    withdrawal_idempotency_key: Mapped[str | None] = mapped_column(String(255))
    withdrawal_request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


STANDING_FEEDBACK = ("heart", "outlier", "rating")  # one each per user and generation


def standing_feedback() -> Any:
    """Joins a generation to its owner's standing (not withdrawn) heart, outlier and rating."""
    fb = GenerationFeedback
    return and_(
        fb.generation_id == Generation.id,
        fb.user_id == Generation.user_id,
        fb.removed_at.is_(None),
        # Not ``in_``: an expanding IN is rendered into the SQL at every
        # execution (a GET's every time); three equalities are compiled once.
        or_(*(fb.feedback_type == kind for kind in STANDING_FEEDBACK)),
    )


class Persona(Base):
    __tablename__ = "personas"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_personas_idempotency"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    keywords: Mapped[list[Any]] = mapped_column(default=list)
    palette: Mapped[list[Any]] = mapped_column(default=list)
    aesthetic: Mapped[str | None] = mapped_column(String(60))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class PromptTokenScore(Base):
    """The optimiser's learnt per-user token scores."""

    __tablename__ = "prompt_token_scores"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    token: Mapped[str] = mapped_column(String(80), primary_key=True)
    score: Mapped[float] = mapped_column(Float, default=0.5)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
