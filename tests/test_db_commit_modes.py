"""``Database.session(durable=...)`` decides whether a commit waits for the WAL
flush, whatever the connection's default (``relax_by_default``, used by the
pipeline workers): a durable session is always durable. And pooled
connections are pinged only after being idle (``PING_AFTER_IDLE``)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from app.db import Database


@pytest.fixture
def pg_url(service_env) -> str:
    return service_env["DATABASE_URL"]


@pytest.fixture
def make_db(pg_url):
    """``make_db(relaxed)``: a Database on the test database, disposed after."""
    made: list[Database] = []

    def make(relaxed: bool = False) -> Database:
        db = Database(pg_url)
        if relaxed:
            db.relax_by_default()
        made.append(db)
        return db

    yield make
    for db in made:
        db.engine.dispose()


def _mode(db: Database, **kw) -> tuple[str, int]:
    """synchronous_commit inside a session, and the SET statements it cost."""
    sets: list[str] = []

    def count(conn, cursor, statement, *_):  # noqa: ARG001
        if statement.lstrip().upper().startswith("SET"):
            sets.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session(**kw) as session:
            mode = session.execute(text("SHOW synchronous_commit")).scalar_one()
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    return mode, len(sets)


@pytest.mark.parametrize("relaxed_default", [False, True])
def test_durable_sessions_are_durable_on_any_connection(make_db, relaxed_default):
    db = make_db(relaxed_default)
    assert _mode(db, durable=True)[0] == "on"
    assert _mode(db, durable=False)[0] == "off"
    # Outside a session the connection keeps its own default.
    with db.engine.connect() as conn:
        default = conn.execute(text("SHOW synchronous_commit")).scalar_one()
    assert default == ("off" if relaxed_default else "on")


def test_relaxed_default_saves_the_set_for_progress_commits(make_db):
    plain, relaxed = make_db(), make_db(relaxed=True)
    assert _mode(plain, durable=False) == ("off", 1)
    assert _mode(relaxed, durable=False) == ("off", 0)
    assert _mode(plain, durable=True) == ("on", 0)
    assert _mode(relaxed, durable=True) == ("on", 1)


def _backend_pid(db: Database) -> int:
    with db.session() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pg_url: str, pid: int) -> None:
    admin = Database(pg_url)
    try:
        with admin.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        admin.engine.dispose()


def test_an_idle_pooled_connection_that_died_is_replaced_unseen(pg_url, make_db, monkeypatch):
    import app.db as dbmod

    db = make_db()
    first = _backend_pid(db)
    _terminate(pg_url, first)
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE", 0.0)  # it has been idle "long enough"
    assert _backend_pid(db) != first  # pinged, found dead, replaced: no error


def test_a_connection_returned_just_now_is_trusted_unless_the_server_closed_it(
    pg_url, make_db, monkeypatch
):
    import time

    import app.db as dbmod

    db = make_db()
    pings: list[int] = []
    real = dbmod._ping
    monkeypatch.setattr(dbmod, "_ping", lambda conn: pings.append(1) or real(conn))
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE", 3600.0)
    first = _backend_pid(db)
    pings.clear()
    assert _backend_pid(db) == first and pings == []  # no round trip to hand it out
    _terminate(pg_url, first)
    time.sleep(0.2)  # the server's goodbye reaches the socket
    assert _backend_pid(db) != first  # seen on the socket, pinged, replaced
    assert pings


@pytest.mark.parametrize("relaxed_default", [False, True])
def test_one_statement_autocommit_writes_are_durable(make_db, relaxed_default):
    db = make_db(relaxed_default)
    with db.session() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS commit_probe (mode text)"))
        session.execute(text("DELETE FROM commit_probe"))
    # The one write that commits on its own outside a session: the submit's
    # statement on the process's own connection (``db.OwnStatement``).
    own = db.own_statement(
        "bff_commit_probe",
        "INSERT INTO commit_probe SELECT current_setting('synchronous_commit')"
        " || %(suffix)s RETURNING mode",
        {"suffix": "text"},
    )
    n = len(own.first_column({"suffix": ""}))
    with db.session() as session:
        assert n == 1
        assert session.execute(text("SELECT mode FROM commit_probe")).scalar_one() == "on"
        session.execute(text("DROP TABLE commit_probe"))


@pytest.mark.parametrize("relaxed_default", [False, True])
def test_every_transaction_of_a_session_keeps_its_commit_mode(make_db, relaxed_default):
    """A checkpoint commits in the middle of a stage's session; what the
    session writes afterwards (a paid provider's result) must be as durable
    as the session asked for, whatever the connection's default."""
    db = make_db(relaxed_default)
    show = text("SHOW synchronous_commit")
    for durable, mode in ((True, "on"), (False, "off")):
        with db.session(durable=durable) as session:
            assert session.execute(show).scalar_one() == mode
            session.commit()  # e.g. a checkpoint
            assert session.execute(show).scalar_one() == mode
            session.commit()
            assert session.execute(show).scalar_one() == mode
