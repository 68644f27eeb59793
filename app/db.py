"""SQLAlchemy engine and session helpers.

One ``Database`` per Flask app (``app.extensions["db"]``). Service functions
take a session and never commit; the caller owns the transaction through
``db.session()``, which commits on success and rolls back on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
    # WAL lets the API read while a worker writes; busy_timeout waits for the
    # writer lock instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def unavailable(exc: BaseException) -> bool:
    """The database went away (refused, cut, restarting, locked), as opposed to
    a statement or a value it refused: worth waiting for, never the job's fault."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


POOL_SIZE = 15


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # At most POOL_SIZE connections per process, as before (5 + 10 overflow),
    # but all of them kept: an overflow connection is closed when it is
    # returned, so under load every 4th-5th submit paid for a new Postgres
    # backend (fork, authentication, cold caches, prepared statements lost).
    return create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=0, pool_recycle=1800
    )


RELAXED = text("SET LOCAL synchronous_commit = off")
DURABLE = text("SET LOCAL synchronous_commit = on")


def make_durable(session: Session) -> None:
    """Make the session's current transaction wait for its WAL flush on commit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(DURABLE)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        # Autocommit: no BEGIN / COMMIT round trips. Only for a read that is one
        # statement (one statement sees one snapshot); never for writes.
        self._autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._read_factory = sessionmaker(self._autocommit_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One pooled connection (one checkout, one pre-ping) for several short
        transactions in a row: pass it to ``session(conn=...)``."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def session(self, durable: bool = True, conn: Connection | None = None) -> Iterator[Session]:
        """``durable=False`` is for progress that may be lost in a database
        server crash because it is re-derived (an idempotent stage runs
        again): on PostgreSQL its commit does not wait for the WAL flush
        (``synchronous_commit = off`` for that transaction only; no
        corruption, at most the last few hundred ms of such commits lost).
        A later durable commit flushes it too. ``conn`` (from ``connection()``,
        outside any transaction) runs this transaction on that connection."""
        session = self._factory() if conn is None else self._factory(bind=conn)
        try:
            if not durable and self.engine.dialect.name == "postgresql":
                session.execute(RELAXED)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for a read done in ONE statement (e.g. the status read):
        autocommit, so it costs that statement's round trip and the pool's
        pre-ping, not a BEGIN and a COMMIT as well. Several statements here
        would each see a different snapshot: use ``session()`` for those."""
        session = self._read_factory()
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A pooled connection in autocommit: each statement is a transaction
        of its own, without BEGIN and COMMIT round trips. For a write that is
        ONE statement (atomic on its own); its commit is durable like any
        other here (``synchronous_commit`` is only relaxed by ``SET LOCAL``)."""
        with self._autocommit_engine.connect() as conn:
            yield conn

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Drop pooled connections; called after fork so children never share one."""
        self.engine.dispose(close=False)
