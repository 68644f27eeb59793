"""SQLAlchemy engine and session helpers.

One ``Database`` per Flask app (``app.extensions["db"]``). Service functions
take a session and never commit; the caller owns the transaction through
``db.session()``, which commits on success and rolls back on error.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

_OWN_LOCK = threading.Lock()


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
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_recycle=1800)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _check_on_checkout)
    return engine


# Instead of ``pool_pre_ping`` (a round trip per checkout, i.e. per
# transaction of a busy process): a pooled connection returned less than
# PING_AFTER_IDLE ago is handed out if its socket shows the server has not
# said goodbye (on a restart, shutdown or pg_terminate_backend the server
# sends a message and closes: there is something to read). Older ones, and
# any that look odd, get the real ``SELECT 1``.
PING_AFTER_IDLE = 1.0
_CHECKED_IN = "bff_checked_in"


def _note_checkin(_dbapi_conn, record) -> None:
    if record is not None:
        record.info[_CHECKED_IN] = time.monotonic()


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


def _ping(dbapi_conn) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("SELECT 1")
    cur.close()
    if not dbapi_conn.autocommit:
        dbapi_conn.rollback()  # the ping opened a transaction


def _check_on_checkout(dbapi_conn, record, _proxy) -> None:
    returned = record.info.get(_CHECKED_IN)
    if (
        returned is not None
        and time.monotonic() - returned < PING_AFTER_IDLE
        and _server_kept(dbapi_conn)
    ):
        return
    try:
        _ping(dbapi_conn)
    except Exception as exc:
        # The pool discards this connection and checks out another (up to 3
        # times), as pool_pre_ping does.
        raise DisconnectionError(f"stale pooled connection: {exc}") from exc


RELAXED = text("SET LOCAL synchronous_commit = off")
DURABLE = text("SET LOCAL synchronous_commit = on")
_RELAXED_CONN = "bff_relaxed"  # connection info: its session default is synchronous_commit=off


_DURABLE_SESSION = "bff_durable"  # session info: its transactions must be durable


def _apply_commit_mode(session: Session, _transaction, connection: Connection) -> None:
    """On EVERY transaction a session begins (not only its first: a checkpoint
    commits mid-session and the stage's result goes in the next one), make the
    commit mode the session asked for, where the connection's default differs."""
    if connection.connection.driver_connection.autocommit:
        return  # reads_in_autocommit: every statement commits on its own, by the default
    durable = session.info.get(_DURABLE_SESSION, True)
    if durable is None:
        return  # the connection's default; the caller makes it durable if it must
    relaxed_conn = connection.info.get(_RELAXED_CONN, False)
    if durable and relaxed_conn:
        connection.execute(DURABLE)
    elif not durable and not relaxed_conn:
        connection.execute(RELAXED)


@contextmanager
def _autocommit(raw: Any) -> Iterator[None]:
    """The psycopg connection in autocommit for one statement (it must be idle)."""
    raw.autocommit = True
    try:
        yield
    finally:
        if not raw.closed:
            raw.autocommit = False


def dialect_insert(dialect_name: str) -> Any:
    """The ``insert`` construct with ``on_conflict_do_*`` for the dialect
    (PostgreSQL's or SQLite's, the two we run on)."""
    return pg_insert if dialect_name == "postgresql" else sqlite_insert


def make_durable(session: Session) -> None:
    """Make the session's current transaction wait for its WAL flush on commit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(DURABLE)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.relaxed_by_default = False
        self._own: dict[str, OwnStatement] = {}
        # Disposing of the engine (tests, shutdown; after a fork, where the
        # parent's connections are only forgotten) closes these too.
        event.listen(self.engine, "engine_disposed", lambda _engine: self._close_own())
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", self._on_connect)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        if self.engine.dialect.name == "postgresql":
            event.listen(self._factory, "after_begin", _apply_commit_mode)
        # Autocommit: no BEGIN / COMMIT round trips. Only for a read that is one
        # statement (one statement sees one snapshot); never for writes.
        self._read_factory = sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

    def relax_by_default(self) -> None:
        """New connections default to ``synchronous_commit = off``, so a
        ``session(durable=False)`` costs no ``SET LOCAL`` round trip and a
        durable one sets it back on for its transaction. For processes whose
        transactions are mostly re-derivable progress (the pipeline workers)."""
        self.relaxed_by_default = True

    def _on_connect(self, dbapi_conn, record) -> None:
        if self.relaxed_by_default:
            cur = dbapi_conn.cursor()
            cur.execute("SET synchronous_commit = off")
            cur.close()
            dbapi_conn.commit()  # psycopg opened a transaction for the SET
            record.info[_RELAXED_CONN] = True

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One pooled connection (one checkout and its check) for several short
        transactions in a row: pass it to ``session(conn=...)``."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def session(
        self, durable: bool | None = True, conn: Connection | None = None
    ) -> Iterator[Session]:
        """``durable=False`` is for progress that may be lost in a database
        server crash because it is re-derived (an idempotent stage runs
        again): on PostgreSQL its commit does not wait for the WAL flush
        (``synchronous_commit = off`` for that transaction only; no
        corruption, at most the last few hundred ms of such commits lost).
        A later durable commit flushes it too. ``durable=None``: no SET at all,
        the connection's default, for a caller that makes the transaction
        durable itself when it must (``make_durable``, or a statement's own
        ``set_config``). ``conn`` (from ``connection()``, outside any
        transaction) runs this transaction on that connection."""
        info = {_DURABLE_SESSION: durable}
        session = self._factory(info=info) if conn is None else self._factory(bind=conn, info=info)
        try:
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
        autocommit, so it costs that statement's round trip, not a BEGIN and
        a COMMIT as well. Several statements here
        would each see a different snapshot: use ``session()`` for those."""
        session = self._read_factory()
        try:
            yield session
        finally:
            session.close()

    def fetchone(
        self, conn: Connection, sql: str, params: Mapping[str, Any], autocommit: bool = False
    ) -> tuple[Any, ...] | None:
        """Run one statement (PostgreSQL, driver SQL: ``%(name)s``) on ``conn``'s
        psycopg connection and return its first row as a plain tuple, without
        SQLAlchemy's per-call result machinery (the runner's claim and record:
        seven of each per generation). ``autocommit``: ``conn`` is outside any
        transaction and the statement commits on its own (no BEGIN/COMMIT round
        trips); otherwise it runs in ``conn``'s transaction (``conn`` from a
        session: ``session.connection()``). Errors come out as SQLAlchemy's,
        and a connection found broken is invalidated, as with ``execute``."""
        raw = conn.connection.driver_connection
        with self._driver_call(conn, sql, params, raw, conn.invalidate):
            with _autocommit(raw) if autocommit else nullcontext(), raw.cursor() as cur:
                cur.execute(sql, params, prepare=True)
                row = cur.fetchone()
                if autocommit:  # (still in autocommit: counters can tell it from a no-op)
                    self._committed(conn)
        return row

    @contextmanager
    def reads_in_autocommit(self, conn: Connection) -> Iterator[None]:
        """PostgreSQL: statements on ``conn`` (idle, from ``connection()``) each
        commit on their own until the block ends, so reads cost no BEGIN and
        COMMIT round trips; under READ COMMITTED each statement sees a fresh
        snapshot in a transaction too. A session on ``conn`` sets no commit
        mode meanwhile. For reads only: a write here is not atomic with
        anything after the block."""
        with _autocommit(conn.connection.driver_connection):
            yield

    def idle(self, conn: Connection) -> bool:
        """PostgreSQL: nothing has been sent in ``conn``'s transaction yet (no
        BEGIN went out), so one statement could run as its own transaction."""
        raw = conn.connection.driver_connection
        return not raw.closed and raw.info.transaction_status == 0  # IDLE

    @contextmanager
    def _driver_call(
        self,
        conn: Connection | None,
        sql: str,
        params: Mapping[str, Any] | None,
        raw: Any,
        invalidate: Any,
    ) -> Iterator[None]:
        """A statement sent on the psycopg connection itself: statement counters
        (tests, bench dbcost) see it, its errors come out as SQLAlchemy's, and
        a connection it finds broken is invalidated."""
        dialect = self.engine.dialect
        if self.engine.dispatch.before_cursor_execute:
            self.engine.dispatch.before_cursor_execute(conn, None, sql, params, None, False)
        try:
            yield
        except dialect.loaded_dbapi.Error as err:
            broken = dialect.is_disconnect(err, raw, None)
            if broken:
                invalidate(err)
            raise DBAPIError.instance(
                sql,
                params,
                err,
                dialect.loaded_dbapi.Error,
                connection_invalidated=broken,
                dialect=dialect,
            ) from err

    def _committed(self, conn: Connection | None) -> None:
        # A statement that committed on its own: commit counters (tests, bench
        # dbcost) count it like a Session's commit. They get ``conn`` in
        # autocommit (or None), where a Session's commit that had nothing to
        # commit (its statements ran in autocommit) finds it idle.
        if self.engine.dispatch.commit:
            self.engine.dispatch.commit(conn)

    def own_statement(self, name: str, sql: str, params: Mapping[str, str]) -> OwnStatement:
        """The ``OwnStatement`` named ``name`` (made on first use)."""
        own = self._own.get(name)
        if own is None:
            with _OWN_LOCK:
                own = self._own.setdefault(name, OwnStatement(self, name, sql, params))
        if own.sql != sql:
            raise ValueError(f"statement {name} is already another statement")
        return own

    def _close_own(self) -> None:
        for own in list(self._own.values()):
            own.close()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Drop pooled connections; called after fork so children never share one."""
        self.engine.dispose(close=False)


class OwnStatement:
    """ONE statement, prepared once, on a PostgreSQL connection of its own
    (outside the pool), for the one hot write of the API: the submit batch
    (``app.submit_batch``; its combiner runs one batch at a time per process,
    the lock here only guards against a second caller).

    A pooled round trip costs the calling thread ~8x the CPU of libpq's own
    (pool checkout and check-in, psycopg's generator protocol, autocommit
    toggles: ~160 against ~20 us here), and every one of psycopg's waits lets
    the GIL go to another of the API's threads and then waits to get it back.
    Here the round trip is one blocking ``PQexecPrepared``: one release of
    the GIL. It runs in autocommit, so the statement is its own transaction;
    the API's connections commit durably (``synchronous_commit`` on).

    Statement counters see it and its errors come out as SQLAlchemy's, as
    with ``Database.fetchone``; a connection found broken is closed and the
    next call opens another (a forked child never uses its parent's). It
    never takes a process's ``relax_by_default``: its commits are durable.
    """

    _TEXT_TYPES = {"json": 114, "int8": 20, "float8": 701, "text": 25}

    def __init__(self, db: Database, name: str, sql: str, params: Mapping[str, str]) -> None:
        """``sql``: driver SQL with ``%(name)s`` parameters, each named in
        ``params`` with its PostgreSQL type (json, int8, float8, text)."""
        self.db, self.sql = db, sql
        self._name = name.encode()
        self._params = list(params)
        native = sql
        for i, key in enumerate(self._params, 1):
            native = native.replace(f"%({key})s", f"${i}")
        if "%(" in native:
            raise ValueError(f"{name}: a parameter of the statement is not declared")
        self._native = native.encode()
        self._types = [self._TEXT_TYPES[params[key]] for key in self._params]
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0

    def first_column(self, params: Mapping[str, Any]) -> list[str]:
        """The first column of the statement's rows, as text."""
        values = [None if params[k] is None else str(params[k]).encode() for k in self._params]
        with self._lock:
            conn = self._connection()
            with self.db._driver_call(None, self.sql, params, conn, self._broken):
                res = conn.pgconn.exec_prepared(self._name, values)
                if res.status != pq.ExecStatus.TUPLES_OK:
                    raise _psycopg_error(res, conn)
            self.db._committed(None)
            return [res.get_value(i, 0).decode() for i in range(res.ntuples)]

    def close(self) -> None:
        """Close its connection (in the process that opened it; elsewhere it
        is only forgotten)."""
        with self._lock:
            self._broken(None)

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and (self._pid != os.getpid() or not _server_kept(conn)):
            self._broken(None)  # closed, said goodbye, or the parent process's
            conn = None
        if conn is None:
            dialect = self.db.engine.dialect
            args, kwargs = dialect.create_connect_args(self.db.engine.url)
            try:
                conn = psycopg.connect(*args, **kwargs, autocommit=True)
                res = conn.pgconn.prepare(self._name, self._native, self._types)
                if res.status != pq.ExecStatus.COMMAND_OK:
                    error = _psycopg_error(res, conn)
                    conn.close()
                    raise error
            except psycopg.Error as err:  # as SQLAlchemy's, like a pooled connect's
                raise DBAPIError.instance(None, None, err, psycopg.Error, dialect=dialect) from err
            self._conn, self._pid = conn, os.getpid()
        return conn

    def _broken(self, _err: BaseException | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - it is being thrown away
                pass


def _psycopg_error(res: Any, conn: Any) -> Exception:
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
