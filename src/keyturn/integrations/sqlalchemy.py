"""SQLAlchemy column types whose values are kt1 tokens in the database and text in Python.

``EncryptedText()`` and ``EncryptedString(length)`` work in ORM models
(``mapped_column(EncryptedText())``) and Core tables alike. Attached to a
table, each learns its own ``table.column``, the context its tokens are bound
to, so the app never spells one. Values are sealed and opened by a
:class:`~keyturn.Store`: the one passed to the type, else the one given to
:func:`configure`, else ``keyturn.open()`` on first use. Because the Store
follows rotations (the app-process contract in docs/ROTATION.md), a model keeps
reading and writing while ``keyturn rotate`` runs.

Reads are strict: a value that does not decrypt raises keyturn's error and is
never returned as stored. NULL stays NULL and '' stays '', in both directions,
as the CLI's operations leave them. Comparing, searching
or sorting an encrypted column in SQL raises :class:`~keyturn.UnqueryableColumn`
when the query is built (or, for a bare ``order_by(column)``, when it runs),
since the database only sees tokens. An error raised while a value is sealed
for writing reaches the app as SQLAlchemy's ``StatementError`` with the keyturn
error as its ``orig`` (SQLAlchemy wraps what bind processing raises; it names the
statement, never the plaintext). Row binding (``bind = "row"``) needs the
primary key when a value is sealed, which a column type never sees: such a
column is refused (seal it through ``Store`` with :func:`keyturn.row_context`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Engine, String, Table, Text, bindparam, event, update
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnClause, ColumnElement, UnaryExpression
from sqlalchemy.types import TypeDecorator

from keyturn._core.context import column_context
from keyturn._core.keyring import Keyring
from keyturn._core.tokens import header, token_length
from keyturn.errors import ConfigError, KeyturnError, UnqueryableColumn
from keyturn.store import Store
from keyturn.store import open as open_store

__all__ = [
    "EncryptedString",
    "EncryptedText",
    "LazyRewrap",
    "configure",
    "encrypted_columns",
    "lazy_rewrap",
    "no_lazy_rewrap",
]

_default: Store | None = None
_default_lock = threading.Lock()
# Every encrypted column attached to a table so far, for checks against the config.
_attached: list[Column[Any]] = []

# What may be asked of an encrypted column in SQL: whether it is NULL.
_NULL_TESTS = (operators.is_, operators.is_not)


def configure(store: Store | None) -> None:
    """Make ``store`` the Store of every encrypted column that was not given one
    (None: open one with ``keyturn.open()`` again on next use). Checks the
    columns attached so far against its config."""
    global _default
    with _default_lock:
        _default = store
    if store is not None:
        for column in list(_attached):
            _check_binding(store, getattr(column.type, "context", None))


def encrypted_columns() -> list[Column[Any]]:
    """The encrypted columns of every table defined so far."""
    return list(_attached)


def _default_store() -> Store:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                opened = open_store()
                for column in list(_attached):
                    _check_binding(opened, getattr(column.type, "context", None))
                _default = opened
    return _default


def _check_binding(store: Store, context: str | None) -> None:
    spec = next((c for c in store.config.columns if c.name == context), None)
    if spec is not None and spec.bind == "row":
        raise ConfigError(
            f'{context} is configured with bind = "row", but a column type seals each value '
            "without its row, so it cannot bind the token to the row's primary key: set "
            'bind = "column" for it, or seal its values through Store with '
            "keyturn.row_context(table, column, pk)"
        )


class LazyRewrap:
    """Opt-in: tokens the app reads on an older key version are noted (up to ``limit``),
    and :meth:`run` re-seals them under the active one, by compare-and-swap on the
    token itself, in short transactions of its own; never from inside a read.

    A token is unique (a random nonce), so ``UPDATE t SET c = :new WHERE c = :old``
    changes exactly the row that still holds it; a row the app changed meanwhile
    is left alone. Without an index on the column each statement scans the table:
    for big tables, ``keyturn rotate`` is the tool (it walks by primary key).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._pending: dict[str, set[str]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def saw(self, context: str, token: str, ring: Keyring) -> None:
        """Note ``token`` (read for ``context``) if it is not on the active version."""
        if token.startswith(header(ring.active_version)) or self._count >= self.limit:
            return
        with self._lock:
            tokens = self._pending.setdefault(context, set())
            if token not in tokens and self._count < self.limit:
                tokens.add(token)
                self._count += 1

    def pending(self) -> int:
        """How many tokens wait to be re-sealed."""
        return self._count

    def run(self, store: Store | None = None, batch: int = 500) -> int:
        """Re-seal what is pending, ``batch`` rows a transaction; the rows changed."""
        store = store or _default_store()
        with self._lock:
            work, self._pending, self._count = self._pending, {}, 0
        changed = 0
        for context, tokens in work.items():
            name, _, column_name = context.partition(".")
            column: ColumnClause[Any] = sql_column(column_name)
            statement = (
                update(sql_table(name, column))
                .where(column == bindparam("old"))
                .values({column_name: bindparam("new")})
            )
            ordered = sorted(tokens)
            for start in range(0, len(ordered), batch):
                swaps = []
                for old in ordered[start : start + batch]:
                    try:
                        plain = store.decrypt_bytes(old, context=context)
                    except KeyturnError:
                        continue  # no longer opens (destroyed meanwhile): leave it
                    swaps.append({"old": old, "new": store.encrypt(plain, context=context)})
                if swaps:
                    with store.engine.begin() as conn:
                        for swap in swaps:
                            changed += conn.execute(statement, swap).rowcount
        return changed

    def start(self, store: Store | None = None, interval: float = 5.0) -> None:
        """Run :meth:`run` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self.run(store)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="keyturn-lazy-rewrap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


_lazy: LazyRewrap | None = None


def lazy_rewrap(limit: int = 10_000) -> LazyRewrap:
    """Turn lazy rewrap on for every encrypted column (see :class:`LazyRewrap`)."""
    global _lazy
    _lazy = LazyRewrap(limit)
    return _lazy


def no_lazy_rewrap() -> None:
    """Turn lazy rewrap off again; what was pending is dropped."""
    global _lazy
    if _lazy is not None:
        _lazy.stop()
    _lazy = None


class _Refusing(TypeDecorator.Comparator):  # type: ignore[type-arg]
    """Every SQL operator but IS [NOT] NULL refused, at query-build time."""

    def operate(self, op: Any, *other: Any, **kwargs: Any) -> ColumnElement[Any]:
        if op in _NULL_TESTS or (op in (operators.eq, operators.ne) and other == (None,)):
            return super().operate(op, *other, **kwargs)
        raise _refusal(self.expr, op)

    def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> ColumnElement[Any]:
        raise _refusal(self.expr, op)


def _refusal(expr: Any, op: Any) -> UnqueryableColumn:
    name = getattr(getattr(expr, "type", None), "context", None) or getattr(expr, "key", "?")
    what = getattr(op, "__name__", str(op)).removesuffix("_op")
    return UnqueryableColumn(
        f"{name} is encrypted: the database holds only tokens, so `{what}` on it would "
        "match or order nothing meaningful; filter or sort in Python after loading, or "
        "keep a separate searchable column (only IS NULL / IS NOT NULL work in SQL)"
    )


class _Encrypted(TypeDecorator[str]):
    """Text in Python, a kt1 token bound to ``table.column`` in the database."""

    impl: Any = Text
    cache_ok = True
    comparator_factory = _Refusing
    #: How ``models = "module:Base"`` in keyturn.toml recognises an encrypted column.
    keyturn_encrypted = True

    def __init__(self, *args: Any, store: Store | None = None, context: str | None = None) -> None:
        super().__init__(*args)
        self.store = store
        self.context = context

    def bound_to(self, table: str, column: str) -> _Encrypted:
        """A copy of this type for column ``table.column`` (each column needs its own)."""
        bound = self.copy()
        bound.context = column_context(table, column)
        return bound

    def _store(self) -> Store:
        store = self.store or _default_store()
        if self.context is None:
            raise ConfigError(
                "an encrypted column type was used before it was attached to a table, so it "
                "does not know the column its tokens belong to"
            )
        return store

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None or value == "":
            return None if value is None else ""  # as encrypt-existing and rotate leave them
        store = self._store()
        token = store.encrypt(value, context=self.context)  # type: ignore[arg-type]
        length = getattr(self.impl_instance, "length", None)
        if length is not None and len(token) > length:
            size = len(value.encode()) if isinstance(value, str) else len(value)
            raise ConfigError(
                f"{self.context}: a {size}-byte secret becomes a {len(token)}-character token, "
                f"and the column holds {length}; widen it to at least "
                f"{token_length(store.keyring.active_version, size)} (docs/FORMAT.md, "
                "'Column width')"
            )
        return token

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return self._store().decrypt(value, context=self.context)  # type: ignore[arg-type]

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        """:meth:`process_result_value` as one closure per statement, with the common
        case (a token on a version the keyring holds) opened by the keyring directly;
        anything else (NULL, '', a reload, legacy or plaintext modes, an error) goes
        through the Store as above. Loading many rows costs little more than the
        decryption itself (bench/orm_load.py)."""
        inner = self.impl_instance.result_processor(dialect, coltype)
        given, context = self.store, self.context
        slow = self.process_result_value
        if inner is not None or context is None:
            return lambda value: slow(inner(value) if inner else value, dialect)
        seen: Keyring | None = None
        open_: Callable[[str], bytes] = slow  # type: ignore[assignment]

        def process(value: Any) -> str | None:
            nonlocal seen, open_
            if value:
                ring = (given or _default or _default_store()).keyring
                if ring is not seen:
                    seen, open_ = ring, ring.opener(context)
                try:
                    plain = open_(value).decode()
                except (KeyturnError, UnicodeDecodeError, TypeError, AttributeError):
                    return slow(value, dialect)
                if _lazy is not None:
                    _lazy.saw(context, value, ring)
                return plain
            return slow(value, dialect)

        return process


class EncryptedText(_Encrypted):
    """An encrypted secret in a TEXT column."""

    impl = Text
    cache_ok = True


class EncryptedString(_Encrypted):
    """An encrypted secret in a VARCHAR(length) column; a token longer than the
    column is refused before it is written."""

    impl = String
    cache_ok = True

    def __init__(
        self, length: int | None = None, *, store: Store | None = None, context: str | None = None
    ) -> None:
        super().__init__(length, store=store, context=context)


@event.listens_for(Column, "after_parent_attach")
def _learn_context(column: Column[Any], table: Any) -> None:
    if isinstance(column.type, _Encrypted) and isinstance(table, Table):
        column.type = column.type.bound_to(table.name, column.name)
        _attached.append(column)
        if column.type.store is not None or _default is not None:
            _check_binding(column.type.store or _default_store(), column.type.context)


@event.listens_for(Engine, "before_execute", retval=False)
def _refuse_order_by(conn: Any, statement: Any, *args: Any) -> None:
    """A bare ``order_by(encrypted_column)`` uses no operator the type can refuse."""
    for clause in getattr(statement, "_order_by_clauses", ()):
        target = clause.element if isinstance(clause, UnaryExpression) else clause
        if isinstance(getattr(target, "type", None), _Encrypted):
            raise _refusal(target, operators.asc_op)
