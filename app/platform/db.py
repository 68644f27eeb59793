"""SQLAlchemy engine and sessions: one ``Database`` per Flask app. Service
functions take a session and never commit; the caller owns the transaction
(``db.session()`` commits on success, rolls back on error).

PostgreSQL connections are set up for a network and server that misbehave:
a closed connection is replaced, not handed out (``pool_pre_ping``); a server
that does not answer fails fast (``connect_timeout``); a vanished peer is
noticed within a minute (TCP keepalives, and ``tcp_user_timeout`` while a
query is unanswered); no statement, lock waits included,
holds a request or worker longer than ``BFF_DB_STATEMENT_TIMEOUT``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, TypeDecorator, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
POOL_SIZE = 15  # per process; gunicorn threads and Celery threads share it
BEAT_POOL_SIZE = 2  # per process, for lease heartbeats only (created when first used)
# Seconds a thread waits for a pooled connection when all are in use (then
# ``PoolTimeout``: the database is too busy, an outage like any other).
POOL_TIMEOUT = 30.0
# PostgreSQL aborts one transaction to break a deadlock (or a serialization
# conflict) and advises running it again.
RETRYABLE_SQLSTATES = ("40P01", "40001")
T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits for the
    # writer lock instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def unavailable(exc: BaseException) -> bool:
    """Worth running again: the database went away (refused, cut, restarting,
    locked), or aborted a statement that may pass next time (a deadlock, a
    statement timeout: OperationalError too), as opposed to a statement or a
    value it refused. A pool with no connection free for ``POOL_TIMEOUT``
    seconds counts too. Which of these is an outage: ``went_away``."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def went_away(exc: BaseException) -> bool:
    """Of the errors ``unavailable`` lets a job retry, those that are an
    outage: the database did not answer, not a statement it refused.
    SQLite's SQLITE_ERROR (no such table, a syntax error) and PostgreSQL's
    codes but a failed connection (08, none: the client's own), a shutdown
    (57P) or too many connections (53300), e.g. a statement timeout (57014)
    or a deadlock, are OperationalError too. (Beat's passes log an outage as
    one warning; anything else must reach Celery's ERROR.)"""
    if not unavailable(exc):
        return False
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        return orig.sqlite_errorname != "SQLITE_ERROR"
    code = getattr(orig, "sqlstate", None)
    return code is None or code.startswith(("08", "57P")) or code == "53300"


def make_engine(
    url: str,
    statement_timeout: float = 30.0,
    pool_size: int = POOL_SIZE,
    lock_timeout: float = 0.0,
) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,  # (see below)
            pool_size=pool_size,
            pool_timeout=POOL_TIMEOUT,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        # A statement's error never quotes its values (prompts, webhook
        # secrets) into logs and tracebacks: only the SQL is shown.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=0,  # an overflow connection is closed on return: a new backend per burst
        pool_timeout=POOL_TIMEOUT,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            # Keepalives only probe an idle link: a query sent to a server that
            # vanished (packets dropped, not refused) would wait out TCP's
            # retransmissions, ~15 minutes. Unacknowledged for a minute: gone.
            "tcp_user_timeout": 60_000,
            "options": f"-c statement_timeout={int(statement_timeout * 1000)}"
            f" -c lock_timeout={int(lock_timeout * 1000)}",
        },
    )


class UtcDateTime(TypeDecorator):
    """Every timestamp column: aware UTC in Python on both databases (SQLite
    stores and hands back naive UTC, as we only ever write UTC; PostgreSQL
    answers in the session's time zone, which need not be UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def db_time(session: Session, dt: datetime) -> datetime:
    """``dt`` as the database compares it (SQLite stores naive UTC)."""
    return dt.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else dt


def begin_for_update(session: Session) -> None:
    """SQLite has no ``SELECT ... FOR UPDATE`` and pysqlite begins a
    transaction only at its first write, so two read-then-write requests can
    both read before either writes. Take SQLite's write lock first (``BEGIN
    IMMEDIATE``): such requests then run one after the other, as the row lock
    makes them on PostgreSQL. A no-op elsewhere, or once a transaction began."""
    conn = session.connection()
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(dialect_name: str) -> Any:
    """The ``insert`` construct with ``on_conflict_do_*`` for the dialect
    (PostgreSQL's or SQLite's, the two we run on)."""
    return pg_insert if dialect_name == "postgresql" else sqlite_insert


class Database:
    def __init__(self, url: str, statement_timeout: float = 30.0) -> None:
        self.url, self.statement_timeout = url, statement_timeout
        self.engine = make_engine(url, statement_timeout)
        # Objects stay readable after a commit (a stage reads the generation
        # its claim committed; a route answers with what it just wrote).
        self.Session = sessionmaker(expire_on_commit=False)
        # Lease heartbeats have a pool of their own: a stage holds its
        # connection while it works, so with every pooled one held (a
        # generator's threads on slow provider calls) a beat must still get
        # through, or live stages look lost and are run (and paid for) again.
        self.beat_engine = make_engine(url, statement_timeout, pool_size=BEAT_POOL_SIZE)
        self.Beats = sessionmaker(self.beat_engine, expire_on_commit=False)
        # Reads (GET of a generation, a page of them) in autocommit: no BEGIN
        # and COMMIT round trips around what is one statement, or a few.
        self._Reader = sessionmaker(expire_on_commit=False)
        self._bind()

    def _bind(self) -> None:
        """Point the sessions at ``engine`` (again, when ``fit_pool`` replaced it)."""
        self.Session.configure(bind=self.engine)
        self._Reader.configure(bind=self.engine.execution_options(isolation_level="AUTOCOMMIT"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed if the block ends normally, else rolled back."""
        with self.Session() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only: each statement sees the data as committed
        when it runs (there is no transaction to make them agree)."""
        with self._Reader() as session:
            yield session

    def transaction(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in one transaction (as ``session()``), run again
        from the start (up to three times in all) when PostgreSQL aborted it
        to break a deadlock: for transactions that lock many rows (a batch's
        generations) while workers lock them one at a time."""
        attempt = 1
        while True:
            try:
                with self.session() as session:
                    return work(session)
            except DBAPIError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in RETRYABLE_SQLSTATES or attempt >= 3:
                    raise
                log.info("transaction aborted (%s), running it again", sqlstate)
                attempt += 1

    def fit_pool(self, threads: int) -> None:
        """A pooled connection for each of ``threads`` working at once (a
        Celery worker's): a stage holds one while it works, through a slow
        provider call, so a smaller pool left the other threads' stages
        waiting, and their generations looking stalled (re-sent)."""
        if threads <= self.engine.pool.size():
            return
        old = self.engine
        self.engine = make_engine(self.url, self.statement_timeout, pool_size=threads)
        self._bind()
        old.dispose()

    def dispose(self) -> None:
        """Drop pooled connections; called after fork so children never share one."""
        self.engine.dispose(close=False)
        self.beat_engine.dispose(close=False)
