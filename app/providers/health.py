"""Provider health as the workers see it: success and failure counts in the
``providers`` table, updated after every ``generate`` stage outcome."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..models import Provider


def record_outcome(session: Session, provider_id: str, ok: bool, error: str | None = None) -> None:
    values = (
        {"success_count": Provider.success_count + 1}
        if ok
        else {"failure_count": Provider.failure_count + 1, "last_error": (error or "")[:2000]}
    )
    session.execute(update(Provider).where(Provider.id == provider_id).values(**values))
