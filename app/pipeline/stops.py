"""Paid work owed a stop: a generation stopped by a cancel, a delete or its
timeout may have Replicate predictions still running (billed for images
nobody will store) or made since the stage's last look (paid, not yet in
the ledger).

Canceling them waits on Replicate (30 s of client timeout a call when it is
slow), so no request and no maintenance pass makes those calls. The stop is
written as a ``provider_stops`` row in the transaction that stops the
generation (what to cancel, as JSON: the generation may be deleted next),
and the ``providers.stop_paid_work`` task (queue ``generation``) makes it:
it cancels, records what it finds paid (named payments: a second run
records nothing twice) and deletes the row. The request sends the task once
it commits; the maintenance beat sends any stop the broker refused at its
next pass, and any still owed a minute after it was sent (a lost message).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Integer, String, delete, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.domain.models import Base, Generation, GenerationStage, utcnow
from app.domain.states import STAGE_DONE
from app.pipeline import payments
from app.platform.config import Settings
from app.platform.db import Database, UtcDateTime, db_time
from app.providers.base import prediction_ids
from app.providers.cancel import cancel_remote

log = logging.getLogger(__name__)

TASK = "providers.stop_paid_work"  # workers.tasks; routed to queue generation
RESEND_AFTER = timedelta(seconds=60)
# A stop Replicate does not answer is asked again for this long: it keeps a
# prediction's outputs an hour, and a cancel after that is of nothing.
GIVE_UP_AFTER = timedelta(hours=1)


class ProviderStop(Base):
    """One stop owed; deleted once made."""

    __tablename__ = "provider_stops"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[str] = mapped_column(String(40))  # no foreign key: it may be deleted
    work: Mapped[dict[str, Any]] = mapped_column(JSON)  # ``paid_work``
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


def paid_work(gen: Generation) -> dict[str, Any] | None:
    """What a stop needs of ``gen``: its unfinished stages that saved
    predictions, as JSON; None when there is nothing to stop."""
    stages = {
        s.name: {"status": s.status, "output": s.output}
        for s in gen.stages
        if s.name in ("generate", "refine")
        and s.status not in STAGE_DONE
        and prediction_ids(s.output)
    }
    if not stages:
        return None
    return {"id": gen.id, "userId": gen.user_id, "provider": gen.provider, "stages": stages}


def unsaved(work: dict[str, Any]) -> Generation:
    """``paid_work``'s generation again, never added to a session."""
    stages = [
        GenerationStage(name=name, status=s["status"], output=s["output"])
        for name, s in work["stages"].items()
    ]
    return Generation(
        id=work["id"], user_id=work["userId"], provider=work["provider"], stages=stages
    )


def owe(session: Session, gen: Generation, sending: bool = True) -> int | None:
    """Write the stop ``gen`` is owed, in the caller's transaction (the one
    that stops it); its id, for ``send`` once that commits (None: none owed).
    ``sending=False``: the beat's next pass sends it."""
    if (work := paid_work(gen)) is None:
        return None
    stop = ProviderStop(generation_id=gen.id, work=work, sent_at=utcnow() if sending else None)
    session.add(stop)
    session.flush()
    return stop.id


def owed(session: Session, generation_id: str) -> bool:
    """``generation_id``'s last run is owed a stop not yet made: a retry would
    resume the predictions it is about to cancel, and a refine asked again
    would pay for an image it made but not yet recorded."""
    stop = select(ProviderStop.id).where(ProviderStop.generation_id == generation_id)
    return session.scalar(stop) is not None


def send(db: Database, celery: Any, stop_id: int | None) -> None:
    """Send a stop just owed (after its commit). The broker refusing it, it is
    marked unsent: the beat's next pass sends it, not a minute on, while the
    predictions it stops are still being paid for."""
    if stop_id is None:
        return
    try:
        celery.send_task(TASK, args=(stop_id,))
    except Exception:  # noqa: BLE001 - the broker is down: the beat sends it
        log.warning("stop %s not sent: the beat sends it", stop_id)
        with suppress(Exception), db.session() as session:  # (failing: in a minute)
            unsent = update(ProviderStop).where(ProviderStop.id == stop_id)
            session.execute(unsent.values(sent_at=None))


def make(db: Database, settings: Settings, stop_id: int) -> None:
    """The task: cancel, record what was found paid, forget the stop. A
    database outage is raised for the task to retry (a payment record waits
    it out first, as every payment's)."""
    with db.Session() as session:
        stop = session.get(ProviderStop, stop_id)
        if stop is None:  # made by another copy
            return
        work, since = stop.work, stop.created_at
        session.rollback()  # no transaction held while Replicate answers
        found = cancel_remote(settings, unsaved(work))
        payments.record_too_late(session, work["userId"], work["id"], found.late)
        if found.unanswered and utcnow() - since < GIVE_UP_AFTER:
            log.warning("%s: no answer to the cancel of %s", work["id"], found.unanswered)
            return  # still owed: the beat sends it again
        session.execute(delete(ProviderStop).where(ProviderStop.id == stop_id))
        session.commit()


def resend_owed(db: Database, celery: Any) -> int:
    """Send the stops not made a minute after they were sent (or never sent:
    owed by a timeout); returns how many."""
    with db.session() as session:
        due = db_time(session, utcnow() - RESEND_AFTER)
        ids = session.scalars(
            select(ProviderStop.id)
            .where(or_(ProviderStop.sent_at.is_(None), ProviderStop.sent_at < due))
            .limit(100)
        ).all()
        if ids:
            session.execute(
                update(ProviderStop).where(ProviderStop.id.in_(ids)).values(sent_at=utcnow())
            )
    for stop_id in ids:
        send(db, celery, stop_id)
    return len(ids)
