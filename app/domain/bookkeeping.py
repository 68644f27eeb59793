"""The workers' own bookkeeping tables, beside the user data of
``app.domain.models``: provider health and the outcome window routing's
circuit breaker reads, and where a paged periodic job stopped."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.models import Base, utcnow
from app.platform.db import UtcDateTime


class Provider(Base):
    """Provider health as seen by the workers (the registry in code holds the rest)."""

    __tablename__ = "providers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(80))
    model: Mapped[str] = mapped_column(String(80))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class MaintenanceState(Base):
    """Where a paged periodic job (the storage sweep) stopped, and its tally."""

    __tablename__ = "maintenance_state"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[str | None] = mapped_column(Text)
    removed: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ProviderOutcome(Base):
    """One ``generate`` outcome: the rolling window routing's circuit breaker reads."""

    __tablename__ = "provider_outcomes"
    # Time first: routing reads every provider's window (migration 0006).
    __table_args__ = (Index("ix_provider_outcomes_created_provider", "created_at", "provider_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(40))
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
