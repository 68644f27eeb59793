"""Group commit of submits (PostgreSQL; prompt and ``vltSpec`` submits, not
uploads): the submits that one API process receives at the same time share
ONE insert statement, ONE durable commit (one WAL flush) and ONE Redis round
trip for their chains (``app.batching``: no timer, a lone submit is a batch
of one at once).

The statement decides per row exactly as it does for one (``app.submissions``):
a row that fails a check, or whose Idempotency-Key was used, is not
inserted, and that request takes the ordinary path, which answers why (or
replays the key). So do all of a batch's requests when the statement fails
(the database is down: each then answers as it would alone, e.g. 503),
unless the rows turn out to be stored (the connection was lost after the
commit): then they are accepted as if the statement had answered. If
the broker refuses the chains, the batch's generations are left to the
maintenance dispatcher, as a single submit's would be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from sqlalchemy import select

from . import generations as svc
from .batching import Combiner
from .config import Settings
from .db import Database
from .models import Generation
from .queue import dispatch_many
from .submissions import SubmitRow, insert_many

log = logging.getLogger(__name__)

# Far above the API's threads per process (32): only a bound on one statement.
MAX_BATCH = 64


class SubmitBatcher:
    """One per app (``Services.submits``); its batching state is per process."""

    def __init__(self, db: Database, celery_app: Celery, settings: Settings) -> None:
        self.db, self.celery_app, self.settings = db, celery_app, settings
        self._combiner: Combiner[SubmitRow, bool] = Combiner(self._run, MAX_BATCH)

    def accept(self, row: SubmitRow) -> bool:
        """True: the generation is stored (durably) and its chain sent or
        left to the dispatcher; answer 202. False: nothing was stored for
        this request; the ordinary path must answer it."""
        try:
            return self._combiner.submit(row)
        except Exception:  # noqa: BLE001 - a bug in a batch must not cost a request
            log.exception("submit batch failed; the ordinary path answers")
            return False

    def _run(self, rows: Sequence[SubmitRow]) -> list[bool]:
        # The same (user, Idempotency-Key) twice: only the first is sent; the
        # others replay its answer (or its refusal) through the ordinary path,
        # which runs after this batch has committed.
        keys: set[tuple[int, str]] = set()
        unique: list[SubmitRow] = []
        for row in rows:
            if row.idempotency_key is not None:
                key = (row.user_id, row.idempotency_key)
                if key in keys:
                    continue
                keys.add(key)
            unique.append(row)
        try:
            inserted = insert_many(self.db, unique, self.settings.submit_rate_limit)
        except Exception as exc:  # noqa: BLE001 - each request alone says what it is
            log.warning("submit batch of %d failed: %s", len(unique), type(exc).__name__)
            # A connection lost after the commit: the rows are there, and
            # inserting them again by the ordinary path would be a conflict.
            inserted = self._stored([row.generation_id for row in unique])
            if not inserted:
                return [False] * len(rows)
        ids = [row.generation_id for row in unique if row.generation_id in inserted]
        self._send(ids)
        return [row.generation_id in inserted for row in rows]

    def _stored(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` exist (none when the database cannot say)."""
        try:
            with self.db.read() as session:
                return set(session.scalars(select(Generation.id).where(Generation.id.in_(ids))))
        except Exception:  # noqa: BLE001 - then the ordinary path answers each
            return set()

    def _send(self, ids: list[str]) -> None:
        """The chains of committed generations; never raises: they are
        stored, so each request answers 202 whatever happens here."""
        try:
            unsent = dispatch_many(self.celery_app, ids)
        except Exception:  # noqa: BLE001 - a bug here must not make them submit again
            log.exception("sending a batch's chains failed")
            unsent = ids
        if not unsent:
            return
        try:
            with self.db.session() as session:
                svc.clear_dispatched(session, *unsent)  # the dispatcher sends them in seconds
        except Exception as exc:  # noqa: BLE001
            # Still found: the dispatcher re-sends what no worker picked up
            # within the first stage's stall timeout (app.maintenance).
            log.warning("could not mark %d undispatched: %s", len(unsent), type(exc).__name__)
