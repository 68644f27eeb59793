"""SQLAlchemy engine and session helpers.

One ``Database`` per Flask app (``app.extensions["db"]``). Service functions
take a session and never commit; the caller owns the transaction through
``db.session()``, which commits on success and rolls back on error.
"""

from __future__ import annotations

import contextvars
import select
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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

# Set for a checkout whose caller accepts the socket check below instead of
# the pre-ping's round trip (``Database.execute_autocommit(ping=False)``).
_socket_check = contextvars.ContextVar("socket_check", default=False)


def _server_kept(dbapi_conn) -> bool:
    """An idle psycopg connection has nothing to read: when there is something
    (the server's "terminating connection" and its FIN on a restart, a
    shutdown, ``pg_terminate_backend``, a cut link) or it is not open, the
    real ping decides."""
    try:
        if dbapi_conn.closed or dbapi_conn.pgconn.transaction_status != 0:  # 0: IDLE
            return False
        poller = select.poll()
        poller.register(dbapi_conn.pgconn.socket, select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
    except Exception:  # noqa: BLE001 - anything odd: ping for real
        return False


def _install_socket_check(engine: Engine) -> None:
    ping = engine.dialect.do_ping

    def do_ping(dbapi_conn) -> bool:
        if _socket_check.get() and _server_kept(dbapi_conn):
            return True
        return ping(dbapi_conn)

    engine.dialect.do_ping = do_ping  # type: ignore[method-assign]


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # At most POOL_SIZE connections per process, as before (5 + 10 overflow),
    # but all of them kept: an overflow connection is closed when it is
    # returned, so under load every 4th-5th submit paid for a new Postgres
    # backend (fork, authentication, cold caches, prepared statements lost).
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=0, pool_recycle=1800
    )
    if engine.dialect.driver == "psycopg":
        _install_socket_check(engine)
    return engine


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
        self._read_factory = sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

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

    def execute_autocommit(
        self, sql: str, params: Mapping[str, Any] | None = None, ping: bool = True
    ) -> int:
        """Run ONE statement (PostgreSQL, driver SQL: ``%(name)s`` parameters)
        as a transaction of its own on a pooled psycopg connection: no BEGIN
        or COMMIT round trips, and none of SQLAlchemy's Connection, context
        and result objects (the submit's hot path). Returns its row count.
        The commit is durable like any other here (``synchronous_commit`` is
        only ever relaxed by ``SET LOCAL``). Errors come out as SQLAlchemy's
        (OperationalError, IntegrityError, ...), and a connection found broken
        leaves the pool, as with a Session.

        ``ping=False``: the pooled connection is checked by looking at its
        socket (has the server said goodbye?) instead of a ``SELECT 1`` round
        trip; one that died silently (no FIN: a host gone, a partition) then
        fails this statement instead of being replaced first."""
        dialect = self.engine.dialect
        token = _socket_check.set(not ping)
        try:
            fairy = self.engine.raw_connection()
        except dialect.loaded_dbapi.Error as err:  # connecting failed: the database is down
            raise DBAPIError.instance(
                None, None, err, dialect.loaded_dbapi.Error, dialect=dialect
            ) from err
        finally:
            _socket_check.reset(token)
        conn = fairy.driver_connection
        try:
            conn.autocommit = True
            if self.engine.dispatch.before_cursor_execute:
                # Statement counters (tests, bench dbcost) see this one too; there
                # is no SQLAlchemy Connection or context to give them (None).
                self.engine.dispatch.before_cursor_execute(None, None, sql, params, None, False)
            try:
                return conn.execute(sql, params).rowcount
            finally:
                if not conn.closed:
                    conn.autocommit = False
        except dialect.loaded_dbapi.Error as err:
            broken = dialect.is_disconnect(err, conn, None)
            if broken:
                fairy.invalidate(err)
            raise DBAPIError.instance(
                sql,
                params,
                err,
                dialect.loaded_dbapi.Error,
                connection_invalidated=broken,
                dialect=dialect,
            ) from err
        finally:
            fairy.close()  # back to the pool (its reset, a rollback, is a no-op when idle)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Drop pooled connections; called after fork so children never share one."""
        self.engine.dispose(close=False)
