"""The storage sweep (app/pipeline/orphans.py) removes objects without a row
once they are old enough, a page at a time, and /metrics counts them."""

from __future__ import annotations

import os
import time

from app.domain import generations as svc
from app.domain.models import Generation
from app.pipeline import orphans
from tests.support.pipeline import run_all, services, submit_prompt
from tests.test_metrics import scrape, value


def _put(app, key: str, age_s: float) -> None:
    storage = services(app).storage
    storage.put(key, b"x", "image/png")
    old = time.time() - age_s
    os.utime(storage._path(key), (old, old))


def _keys(app) -> set[str]:
    return {o.key for o in services(app).storage.list("users/", None, 1000)}


def test_the_sweep_removes_old_objects_without_a_row(app, client, user):
    s, old = services(app), orphans.GRACE.total_seconds() + 60
    done = submit_prompt(client, user.headers)
    run_all(app, done)  # completed: its image has a row
    with s.db.session() as session:
        failed = svc.create(session, user_id=user.id, mode="prompt", settings={}, prompt="x")
        failed.status = "failed"  # a retry may still store what it left
    prefix = f"users/{user.id}/generations"
    _put(app, f"{prefix}/gen_deleted/0.png", old)  # its generation is gone
    _put(app, f"{prefix}/gen_recent/0.png", 5)  # too young: its row may not be committed
    _put(app, f"{prefix}/{done}/9.png", old)  # not recorded by a finished generation
    _put(app, f"{prefix}/{failed.id}/0.png", old)
    before = _keys(app)
    for key in before:
        if done in key:
            os.utime(s.storage._path(key), (time.time() - old,) * 2)

    removed = sum(orphans.sweep(s.db, s.storage, page=2) for _ in range(4))  # wraps around
    assert removed == 2
    assert before - _keys(app) == {f"{prefix}/gen_deleted/0.png", f"{prefix}/{done}/9.png"}
    with s.db.session() as session:
        assert session.get(Generation, done).assets[0].r2_key in _keys(app)
    m = scrape(client)["bff_storage_orphans_removed"]
    assert value(m, "bff_storage_orphans_removed_total") == 2
