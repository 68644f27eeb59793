"""A request body is read before the generation is locked: a client that
sends it slowly holds a thread, never the row (PostgreSQL) or the whole
database's write lock (SQLite), which every stage of the job, and on SQLite
every writer, would wait on."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest

from tests.test_api_generations import completed


def lock_free(app, gen_id: str) -> bool:
    """Whether another connection can take what the route's lock takes, now."""
    engine = app.extensions["bff"].db.engine
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:  # "database is locked"
            return False
        finally:
            conn.close()
    with engine.connect() as conn:
        try:
            conn.exec_driver_sql(
                "SELECT id FROM generations WHERE id = %(id)s FOR UPDATE NOWAIT", {"id": gen_id}
            )
            return True
        except Exception:  # LockNotAvailable
            return False
        finally:
            conn.rollback()


class WatchedBody(io.BytesIO):
    """The body, noting whether the generation was free as it was read."""

    def __init__(self, app, gen_id: str, body: dict) -> None:
        super().__init__(json.dumps(body).encode())
        self.app, self.gen_id, self.free_while_read = app, gen_id, []

    def read(self, *args) -> bytes:
        self.free_while_read.append(lock_free(self.app, self.gen_id))
        return super().read(*args)

    def readinto(self, buffer) -> int:  # what werkzeug reads with
        self.free_while_read.append(lock_free(self.app, self.gen_id))
        return super().readinto(buffer)


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("feedback", {"feedbackType": "heart"}, 201),
        ("assets/{asset}/refine", {"upscale": 2}, 202),
    ],
    ids=["feedback", "refine"],
)
def test_the_body_is_read_before_the_generation_is_locked(any_db, path, body, status):
    app, user = any_db
    client = app.test_client()
    gen_id = completed(app, client, user)
    asset = client.get(f"/api/generate/{gen_id}", headers=user.headers).json["assets"][0]["id"]
    stream = WatchedBody(app, gen_id, body)
    resp = client.post(
        f"/api/generate/{gen_id}/{path.format(asset=asset)}",
        input_stream=stream,
        content_type="application/json",
        content_length=len(stream.getvalue()),
        headers=user.headers,
    )
    assert resp.status_code == status, resp.get_json()
    assert stream.free_while_read and all(stream.free_while_read)
