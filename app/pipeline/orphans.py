"""The storage sweep: every object in the bucket has a row.

Stages and deletes clean up after themselves; what slips through is an
object stored by a worker killed between its upload and its record. Each run
walks a page of the bucket (resuming where the last stopped) and removes
objects older than ``GRACE`` whose generation is gone or has ended for good
without recording them. Younger objects may belong to work not yet
committed; a failed generation keeps its objects, since a retry may store them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.bookkeeping import MaintenanceState
from app.domain.models import Generation, GenerationAsset, utcnow
from app.domain.states import TERMINAL
from app.platform.db import Database
from app.platform.storage import Storage, StoredObject

log = logging.getLogger(__name__)

NAME = "storage-sweep"
ROOT = "users/"  # generation objects: users/<user>/generations/<generation>/...
PAGE = 500
GRACE = timedelta(minutes=10)


def sweep(db: Database, storage: Storage, page: int = PAGE) -> int:
    """One page of the walk; returns how many objects it removed."""
    with db.session() as session:
        state = session.get(MaintenanceState, NAME, with_for_update=True)
        if state is None:
            state = MaintenanceState(name=NAME, removed=0)
            session.add(state)
        objects = storage.list(ROOT, state.position, page)
        orphans = _orphans(session, objects)
        storage.delete(orphans)  # first: if it fails, the walk does not move on
        state.position = objects[-1].key if len(objects) == page else None
        state.removed = (state.removed or 0) + len(orphans)
        state.updated_at = utcnow()
    if orphans:
        log.warning("storage sweep removed %d object(s) without a row: %s", len(orphans), orphans)
    return len(orphans)


def _orphans(session: Session, objects: list[StoredObject]) -> list[str]:
    settled = utcnow() - GRACE
    by_generation: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        parts = obj.key.split("/")
        if len(parts) >= 5 and parts[2] == "generations" and obj.modified < settled:
            by_generation[parts[3]].append(obj.key)
    if not by_generation:
        return []
    ids = list(by_generation)
    gens = {
        row.id: row
        for row in session.execute(
            select(Generation.id, Generation.status, Generation.input_key).where(
                Generation.id.in_(ids)
            )
        )
    }
    recorded = set(
        session.scalars(
            select(GenerationAsset.r2_key).where(GenerationAsset.generation_id.in_(ids))
        )
    )
    orphans = []
    for gen_id, keys in by_generation.items():
        gen = gens.get(gen_id)
        for key in keys:
            if gen is None or (
                gen.status in TERMINAL and key not in recorded and key != gen.input_key
            ):
                orphans.append(key)
    return orphans
