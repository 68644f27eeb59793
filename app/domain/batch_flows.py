"""What happens to a batch after its generations' transactions commit: the
completion check each final transition triggers, and the sweep that makes
sure no completion is lost (as the dispatcher makes sure no job is).

Completion is a count taken in the database, not a Celery chord: there is no
result backend (Postgres is the truth), a chord's callback never runs when a
member ends in ``Ignore`` (canceled) or an error (failed), and a member the
dispatcher re-sends runs in a new chain the chord does not know."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from app.domain import batches

log = logging.getLogger(__name__)
SWEEP_GRACE = timedelta(seconds=30)  # let the members' own checks run first


def finish(services: Any, batch_id: str) -> bool:
    """Mark the batch finished if every generation is final, recording its
    completion webhook in the same transaction; then send it."""
    from app.api.batch_responses import batch_json  # the API's models import the domain
    from app.webhooks import record_batch_final, send

    delivery_id = None
    with services.db.session() as session:
        batch = batches.finish_if_done(session, batch_id)
        if batch is None:
            return False
        shown = batches.view(session, batch)
        delivery_id = record_batch_final(session, batch, shown.status, batch_json(shown))
    if delivery_id:
        send(services.db, services.celery, delivery_id, 1)
    log.info("batch %s finished", batch_id)
    return True


def sweep(services: Any) -> int:
    """Finish every batch whose members are all final but whose own check
    was lost (a process died between a member's commit and its check)."""
    with services.db.read() as session:
        ids = batches.unfinished_batches(session, SWEEP_GRACE)
    return sum(finish(services, batch_id) for batch_id in ids)
