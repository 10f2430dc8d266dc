"""Opening the application's database with the settings keyturn relies on."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    String,
    cast,
    create_engine,
    event,
    inspect,
    type_coerce,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

from keyturn.errors import ConfigError, DatabaseError

#: The width of every ``created_by`` / ``actor`` column.
ACTOR_CHARS = 255


def bound_actor(actor: str) -> str:
    """An actor as stored: cut once to its columns' width, before it is MAC'd or stored
    (a 270-character LOGNAME made the stored and the MAC'd actor differ)."""
    return actor[:ACTOR_CHARS]


def utcnow() -> datetime:
    """Naive UTC, as stored in DateTime columns on every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


def raw_columns(table: Any) -> list[Any]:
    """A table's columns for a SELECT, its DateTime ones as the driver returns them: a
    value SQLite holds that is not a date (a row edited by hand) then reaches
    :func:`stored_datetime` instead of failing inside SQLAlchemy."""
    return [
        type_coerce(c, String).label(c.name) if isinstance(c.type, DateTime) else c
        for c in table.columns
    ]


def stored_datetime(value: Any) -> datetime | None:
    """A DateTime column's value from :func:`raw_columns`; None if it is not a date."""
    if isinstance(value, datetime) or value is None:
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


# Per engine, the names of keyturn's tables a fresh connection has seen (has_table).
_TABLES_SEEN: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()


def has_table(conn: Connection, name: str) -> bool:
    """Whether keyturn's own table ``name`` exists. Once a connection outside any
    transaction has seen it (so it was committed), this process takes it as there:
    keyturn never drops its current tables, and the question was asked again at
    each step of an operation (14 catalog queries in one rotation)."""
    seen = _TABLES_SEEN.setdefault(conn.engine, set())
    if name in seen:
        return True
    fresh = not conn.in_transaction()
    present = inspect(conn).has_table(name)
    if present and fresh:
        seen.add(name)
    return present


def connect(url: str) -> Engine:
    """An engine for ``url``; SQL parameters (tokens, secrets) never appear in errors.

    SQLite gets real transactions (``BEGIN`` issued by us, DDL included) and a
    busy timeout, so batches are atomic and wait for the app's locks.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            db = parsed.database
            if db and db != ":memory:" and not Path(db).is_file():
                raise ConfigError(f"the SQLite database {db} does not exist")
            engine = create_engine(url, hide_parameters=True, connect_args={"timeout": 30})
            _sqlite_transactions(engine)
            return engine
        engine = create_engine(url, hide_parameters=True, pool_pre_ping=True)
        if engine.dialect.driver == "pymysql":
            from keyturn.db.pymysql_tls import share_preferred_tls

            share_preferred_tls(engine)
        return engine
    except NoSuchModuleError:
        raise ConfigError(
            f"`database`: unknown kind of database {backend!r}; keyturn supports sqlite://, "
            "postgresql+psycopg:// and mysql+pymysql:// (MariaDB, MySQL)"
        ) from None
    except ImportError as exc:
        extra = _EXTRAS.get(backend)
        hint = f"pip install 'keyturn[{extra}]'" if extra else "install its driver"
        raise ConfigError(
            f"`database`: the driver for {backend} is not installed ({exc.name}): {hint}"
        ) from None


_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def _sqlite_transactions(engine: Engine) -> None:
    # pysqlite's legacy mode does not open a transaction before DDL or SELECT;
    # the SQLAlchemy-documented fix is to disable it and emit BEGIN ourselves.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes gets SQLITE_BUSY at
        # once, without waiting, if the app is mid-write (SQLite refuses the
        # lock upgrade to avoid a deadlock). Writers therefore take the write
        # lock up front, and wait for it under the busy timeout.
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_WRITE = "keyturn_write"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: committed on success, rolled back on error."""
    with engine.connect() as conn, writing_on(conn):
        yield conn


@contextmanager
def writing_on(conn: Connection) -> Iterator[Connection]:
    """:func:`write_transaction` on ``conn``, which has no transaction open."""
    conn.execution_options(**{_WRITE: True})
    with conn.begin():
        yield conn


def data_version(conn: Connection) -> int:
    """SQLite's ``PRAGMA data_version`` on ``conn``: it changes whenever another
    connection, of any process, commits to the database, and never for this
    connection's own commits (sqlite.org/pragma.html#pragma_data_version)."""
    (version,) = conn.exec_driver_sql("PRAGMA data_version").fetchone()  # type: ignore[misc]
    return int(version)


class DriverStatement:
    """A statement compiled once for a dialect, run with the driver's executemany.

    SQLAlchemy's per-row parameter processing cost more than the crypto in the
    rewrite loop (bench/rotate.py); the values keyturn binds (text, ints, the
    primary keys as read) need none of it.
    """

    def __init__(self, statement: Any, dialect: Any, names: list[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self._names = names
        self._order: list[int] | None = None
        if compiled.positional:
            self._order = [names.index(n) for n in compiled.positiontup]

    def arrange(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        """``rows`` hold values in ``names`` order; reorder or name them for the driver."""
        if self._order is not None:
            order = self._order
            if order == list(range(len(order))):
                return rows
            if len(order) == 1:
                return [(row[order[0]],) for row in rows]
            return list(map(itemgetter(*order), rows))
        names = self._names
        return [dict(zip(names, row, strict=True)) for row in rows]

    def from_columns(self, columns: Sequence[Sequence[Any]]) -> list[Any]:
        """The same for values given column by column, in ``names`` order."""
        if self._order is not None:
            return list(zip(*(columns[k] for k in self._order), strict=True))
        return self.arrange(list(zip(*columns, strict=True)))

    def executemany(self, conn: Connection, rows: list[tuple[Any, ...]]) -> Any:
        return conn.exec_driver_sql(self.sql, self.arrange(rows))


def fetch_raw(conn: Connection, query: Any) -> list[tuple[Any, ...]]:
    """Run a SELECT built with SQLAlchemy on the driver's cursor; plain tuples back.

    For the rewrite loop's keyset reads, where building Row objects cost as
    much as the query (and no logger sees the values). It shares ``conn``'s
    DBAPI connection and transaction.
    """
    with _executed(conn, query) as cursor:
        return list(cursor.fetchall())


def stream_raw(conn: Connection, query: Any, size: int = 10_000) -> Iterator[tuple[Any, ...]]:
    """Like :func:`fetch_raw`, a page at a time. For values that may be plaintext:
    on the driver's cursor no logger sees them (SQLAlchemy logs rows at DEBUG)."""
    with _executed(conn, query) as cursor:
        while page := cursor.fetchmany(size):
            yield from page


@contextmanager
def _executed(conn: Connection, query: Any) -> Iterator[Any]:
    # render_postcompile expands IN lists into one placeholder per value.
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args: Any = params
    if compiled.positional:
        args = tuple(params[name] for name in compiled.positiontup)
    with driver_cursor(conn, compiled.string) as cursor:
        cursor.execute(compiled.string, args)
        yield cursor


@contextmanager
def driver_cursor(conn: Connection, statement: str) -> Iterator[Any]:
    """A DBAPI cursor on ``conn``'s connection whose errors arrive as SQLAlchemy's.

    Like ``Connection.execute``: a driver error becomes a ``DBAPIError`` (no
    parameters shown), and a lost connection is invalidated, not reused.
    """
    dbapi_conn = conn.connection.dbapi_connection
    cursor = dbapi_conn.cursor()  # type: ignore[union-attr]
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield cursor
    except base as exc:
        lost = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            _described(statement),
            None,
            exc,
            base,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=conn.dialect,
        ) from exc
    finally:
        with suppress(Exception):  # closing a cursor on a lost connection may fail too
            cursor.close()


def _described(statement: str) -> str:
    """A statement for an error: its start, never the values a swap may inline."""
    return statement.split("(", 1)[0][:120].rstrip() + " … (values not shown)"


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\bnear\b.*", re.DOTALL)


#: What a database failure raises below keyturn; shells turn it into :func:`database_error`.
DRIVER_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError,)


def database_error(exc: Exception) -> DatabaseError:
    """keyturn's error for a database failure: the driver's first line, quoted text
    and a syntax error's context removed (they can quote a statement's values)."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    first = _QUOTED.sub("'…'", lines[0]) if lines else type(exc).__name__
    return DatabaseError(
        f"database error: {first}; nothing further was written",
        connection_invalidated=bool(getattr(exc, "connection_invalidated", False)),
    )


def exact_equals(column: Any, value: Any, dialect: Any) -> Any:
    """``column = value``, byte for byte, on every backend.

    MySQL's and MariaDB's default collations ignore case and trailing spaces,
    so a compare-and-swap on ``Password`` would also match ``password `` that
    the app wrote meanwhile, and overwrite it. Comparing as binary there
    keeps the swap exact.
    """
    if dialect.name in ("mysql", "mariadb"):
        return cast(column, LargeBinary) == cast(value, LargeBinary)  # CAST(… AS BINARY)
    return column == value


def quiet_driver_logs() -> None:
    """Silences drivers' own reports of an error keyturn reports as one line."""
    # psycopg warns while tearing down a pipeline on a lost connection.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # When the server ends a session, the pool's rollback of that dead connection
    # fails too and is logged with a traceback ("Exception during reset").
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
