"""The ``webhook_deliveries`` table: one row per message, its attempts and outcome."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.models import Base, utcnow
from app.platform.db import UtcDateTime

PENDING, DELIVERED, FAILED, REFUSED = "pending", "delivered", "failed", "refused"
SUPERSEDED = "superseded"  # a newer message about the same generation or batch was queued


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    # As migration 0003 made them: a generation's deliveries; the sweep's due ones.
    __table_args__ = (
        Index("ix_webhook_deliveries_generation", "generation_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # A message is about a generation or (its completion) a batch.
    generation_id: Mapped[str | None] = mapped_column(String(40))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
