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
statement, never the plaintext).

``bind="row"`` binds each token to its row's primary key as well. A column type
never sees the row, so for such a column the ORM's flush seals the value once
the key is known, and loading an instance opens it (mapper events, below); a
key the database generates on INSERT comes too late, so such a model is
refused when its class is defined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Column, Engine, String, Table, Text, bindparam, event, update
from sqlalchemy import column as sql_column
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import table as sql_table
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnClause, ColumnElement, UnaryExpression
from sqlalchemy.types import TypeDecorator

from keyturn._core.context import column_context, row_context
from keyturn._core.jsonpath import parse_path
from keyturn._core.keyring import Keyring
from keyturn._core.tokens import header, token_length, version_of
from keyturn.config import ColumnSpec
from keyturn.documents import JsonFields
from keyturn.errors import ConfigError, KeyturnError, UnqueryableColumn
from keyturn.store import Store
from keyturn.store import open as open_store

__all__ = [
    "EncryptedJSON",
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
    if store is not None:
        for column in list(_attached):
            _check_binding(store, column)  # before it is used: nothing sealed yet
    with _default_lock:
        _default = store


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
                    _check_binding(opened, column)
                _default = opened
    return _default


def _check_binding(store: Store, column: Column[Any]) -> None:
    """The model and keyturn.toml must bind a column's tokens alike, or one side's
    tokens would not open on the other (the CLI's rotate would fail them)."""
    kind = column.type
    assert isinstance(kind, _Encrypted)  # only encrypted columns are attached here
    spec = next((c for c in store.config.columns if c.name == kind.context), None)
    if spec is not None and spec.bind != kind.keyturn_bind:
        raise ConfigError(
            f'{kind.context} has bind = "{spec.bind}" in keyturn.toml but bind = '
            f'"{kind.keyturn_bind}" in the model ({type(kind).__name__}(..., bind=...)); '
            "make them the same"
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
        if (
            version_of(token) is None  # plaintext or legacy: encrypt-existing's, not ours
            or token.startswith(header(ring.active_version))
            or self._count >= self.limit
        ):
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

    def __init__(
        self,
        *args: Any,
        store: Store | None = None,
        context: str | None = None,
        bind: str = "column",
    ) -> None:
        super().__init__(*args)
        if bind not in ("column", "row"):
            raise ConfigError(f'bind must be "column" or "row", not {bind!r}')
        self.store = store
        self.context = context
        #: "row": tokens bound to the row's primary key, sealed by the ORM (see below).
        self.keyturn_bind = bind
        self.table_name: str | None = None
        self.column_name: str | None = None

    def bound_to(self, table: str, column: str) -> _Encrypted:
        """A copy of this type for column ``table.column`` (each column needs its own)."""
        bound = self.copy()
        bound.context = column_context(table, column)
        bound.table_name, bound.column_name = table, column
        return bound

    def row_context(self, pk: tuple[Any, ...]) -> str:
        """The context of this row-bound column's value in the row with key ``pk``."""
        return row_context(self.table_name, self.column_name, pk)  # type: ignore[arg-type]

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
        if self.keyturn_bind == "row":
            return self._row_token(value)
        store = self._store()
        token = store.encrypt(value, context=self.context)  # type: ignore[arg-type]
        self._check_fits(store, value, token)
        return token

    def _row_token(self, value: Any) -> str:
        """A row-bound value was sealed by the ORM's flush (which knows the key), or
        by the app itself through Store; anything else is refused."""
        if isinstance(value, _Sealed) or (isinstance(value, str) and version_of(value)):
            return str(value)
        raise ConfigError(
            f"{self.context} is bound to its rows, so a value is sealed with the row's "
            "primary key: write it through the ORM, or seal it first with "
            "store.encrypt(value, context=keyturn.row_context(table, column, pk))"
        )

    def _check_fits(self, store: Store, value: Any, token: str) -> None:
        length = getattr(self.impl_instance, "length", None)
        if length is not None and len(token) > length:
            size = len(value.encode()) if isinstance(value, str) else len(value)
            raise ConfigError(
                f"{self.context}: a {size}-byte secret becomes a {len(token)}-character token, "
                f"and the column holds {length}; widen it to at least "
                f"{token_length(store.keyring.active_version, size)} (docs/FORMAT.md, "
                "'Column width')"
            )

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
        if self.keyturn_bind == "row":
            return inner  # tokens as stored; the ORM's load event opens them with the key
        if inner is not None or context is None:
            return lambda value: slow(inner(value) if inner else value, dialect)
        opened: tuple[Store, Callable[[str], str]] | None = None

        def process(value: Any) -> str | None:
            nonlocal opened
            if not value:
                return slow(value, dialect)
            store = given or _default or _default_store()
            if opened is None or opened[0] is not store:
                opened = (store, store.opener(context))
            plain = opened[1](value)
            if _lazy is not None:
                _lazy.saw(context, value, store.keyring)
            return plain

        return process


class _Sealed(str):
    """A token the ORM's flush sealed for a row-bound column, on its way to the database."""

    __slots__ = ()


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
        self,
        length: int | None = None,
        *,
        store: Store | None = None,
        context: str | None = None,
        bind: str = "column",
    ) -> None:
        super().__init__(length, store=store, context=context, bind=bind)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON column (dicts and lists in Python) whose ``fields`` are secrets: sealed
    on write and opened on read, each bound to its path (``table.column$.apiKey``),
    as keyturn's operations expect of a column with ``json_fields``. The rest of
    the document is plain JSON, and may be queried as usual."""

    impl: Any = JSON
    cache_ok = True
    keyturn_encrypted = True

    def __init__(
        self,
        fields: list[str] | tuple[str, ...],
        *,
        store: Store | None = None,
        bind: str = "column",
    ) -> None:
        super().__init__()
        if bind != "column":
            raise ConfigError(
                'EncryptedJSON binds its fields to the column and path; bind = "row" is not '
                "supported for JSON documents in the ORM yet"
            )
        #: The paths as keyturn.toml's ``json_fields`` spells them (checked now).
        self.keyturn_json_fields = tuple(parse_path(f).text for f in fields)
        self.keyturn_bind = bind
        self.store = store
        self.context: str | None = None
        self.table_name = self.column_name = ""
        self._fields: JsonFields | None = None

    def bound_to(self, table: str, column: str) -> EncryptedJSON:
        bound = self.copy()
        bound.context = column_context(table, column)
        bound.table_name, bound.column_name = table, column
        return bound

    def _json_fields(self) -> JsonFields:
        store = self.store or _default_store()
        if self.context is None:
            raise ConfigError(
                "an EncryptedJSON column was used before it was attached to a table, so it "
                "does not know the column its tokens belong to"
            )
        if self._fields is None or self._fields._store is not store:
            paths = tuple(parse_path(f) for f in self.keyturn_json_fields)
            spec = ColumnSpec(self.table_name, self.column_name, ("id",), json_fields=paths)
            self._fields = JsonFields(store, spec)
        return self._fields

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return self._json_fields().encrypt(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return self._json_fields().decrypt(value)


@event.listens_for(Column, "after_parent_attach")
def _learn_context(column: Column[Any], table: Any) -> None:
    if isinstance(column.type, EncryptedJSON) and isinstance(table, Table):
        column.type = column.type.bound_to(table.name, column.name)
        return
    if isinstance(column.type, _Encrypted) and isinstance(table, Table):
        column.type = column.type.bound_to(table.name, column.name)
        _attached.append(column)
        if column.type.store is not None or _default is not None:
            _check_binding(column.type._store(), column)


@event.listens_for(Engine, "before_execute", retval=False)
def _refuse_order_by(conn: Any, statement: Any, *args: Any) -> None:
    """A bare ``order_by(encrypted_column)`` uses no operator the type can refuse."""
    for clause in getattr(statement, "_order_by_clauses", ()):
        target = clause.element if isinstance(clause, UnaryExpression) else clause
        if isinstance(getattr(target, "type", None), _Encrypted):
            raise _refusal(target, operators.asc_op)


# -- row binding: sealed and opened by ORM events, which know each row's key ----------


@event.listens_for(Mapper, "after_mapper_constructed")
def _refuse_generated_keys(mapper: Mapper[Any], class_: type) -> None:
    """A row-bound column needs its row's key before the value is sealed: a key the
    database generates on INSERT comes too late, so the model itself is refused."""
    table = mapper.local_table
    generated = getattr(table, "autoincrement_column", None)
    if generated is None:
        return
    for column in getattr(table, "columns", ()):
        kind = column.type
        if isinstance(kind, _Encrypted) and kind.keyturn_bind == "row":
            raise ConfigError(
                f"{class_.__name__}: {kind.context} is bound to its rows, but "
                f"{generated.table.name}.{generated.name} is generated by the database on "
                "INSERT, after the value must be sealed: give the key a value before the "
                "flush (autoincrement=False, a client-side default such as a UUID) or use "
                'bind="column" for this column'
            )


@event.listens_for(Mapper, "mapper_configured")
def _row_binding(mapper: Mapper[Any], class_: type) -> None:
    """For a mapped class with row-bound encrypted columns: seal them in the flush,
    once the primary key is known, and open them when an instance is loaded."""
    table = mapper.local_table
    columns = [
        c
        for c in getattr(table, "columns", ())
        if isinstance(c.type, _Encrypted) and c.type.keyturn_bind == "row"
    ]
    if not columns:
        return
    keyed = [(mapper.get_property_by_column(c).key, c) for c in columns]

    def seal(mapper: Mapper[Any], connection: Any, target: Any) -> None:
        state = sa_inspect(target)
        plain: dict[str, Any] = {}
        for key, column in keyed:
            kind = column.type
            value = state.dict.get(key)
            if not state.attrs[key].history.added or not value or isinstance(value, _Sealed):
                continue  # unchanged, NULL or empty
            pk = mapper.primary_key_from_instance(target)
            if any(part is None for part in pk):
                raise ConfigError(
                    f"{kind.context} is bound to its rows, and this {type(target).__name__} "
                    "has no primary key yet: assign it before the flush"
                )
            store = kind._store()
            token = store.encrypt(value, context=kind.row_context(pk))
            kind._check_fits(store, value, token)
            plain[key] = value
            setattr(target, key, _Sealed(token))
        if plain:
            state.info["keyturn_plain"] = plain

    def flushed(mapper: Mapper[Any], connection: Any, target: Any) -> None:
        state = sa_inspect(target)
        for key, value in state.info.pop("keyturn_plain", {}).items():
            set_committed_value(target, key, value)  # the app keeps seeing its text

    def opened(target: Any, context: Any, attrs: Any = None) -> None:
        state = sa_inspect(target)
        for key, column in keyed:
            kind = column.type
            token = state.dict.get(key)
            if not isinstance(token, str) or not token or isinstance(token, _Sealed):
                continue
            where = kind.row_context(mapper.primary_key_from_instance(target))
            set_committed_value(target, key, kind._store().decrypt(token, context=where))

    for name, handler in (
        ("before_insert", seal),
        ("before_update", seal),
        ("after_insert", flushed),
        ("after_update", flushed),
        ("load", opened),
        ("refresh", opened),
    ):
        event.listen(mapper, name, handler)
