"""Binding configured columns to the live schema, with checks that name the entry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    cast,
    func,
    inspect,
    not_,
    select,
    tuple_,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import JSON, LargeBinary, NullType, _Binary

from keyturn._core import tokens
from keyturn._core.jsonpath import locate
from keyturn.config import ColumnSpec
from keyturn.db.database import fetch_raw, stream_raw
from keyturn.errors import InvalidDocument, SchemaError

# The shortest token keyturn can write (empty plaintext, a 6-digit version).
MIN_TOKEN_WIDTH = tokens.token_length(999_999, 0)


@dataclass(frozen=True)
class BoundColumn:
    """A configured column resolved against the database."""

    spec: ColumnSpec
    table: Table
    width: int | None  # declared maximum length in characters, if any

    @property
    def pk(self) -> list[Column[Any]]:
        return [self.table.c[name] for name in self.spec.primary_key]

    @property
    def value(self) -> Column[Any]:
        return self.table.c[self.spec.column]

    @property
    def text(self) -> Any:
        """The value as text, for comparing (``LIKE 'kt1:%'``, ``= ''``) and reading
        tokens: a JSON-typed column cast (drivers would otherwise parse it, and
        ``LIKE`` or ``= ''`` fail on it), a binary one seen as text."""
        return text_of(self.value)

    @property
    def binary(self) -> bool:
        """Whether the column is BLOB, bytea or (VAR)BINARY: values are read as bytes
        (see :func:`from_stored`) and tokens written as their ASCII bytes."""
        return is_binary(self.value.type)

    @property
    def rows(self) -> list[ColumnElement[bool]]:
        """The conditions selecting the column's rows (its ``where`` filter), to pass
        to ``.where(*rows)``; none for a whole column."""
        return row_filter(self.table, self.spec)

    def secret_values(self, conn: Connection, *, in_order: bool = False) -> Iterator[Any]:
        """The column's non-empty values that are not kt1 tokens (plaintext or
        legacy), read on the driver's cursor so no logger sees them; for a JSON
        column, the string values of its fields (a document that is not JSON is
        skipped: the operations report it by primary key)."""
        paths = self.spec.json_fields
        if not paths:
            query = self.non_token_values()
        else:
            value = self.text
            query = select(value).where(*self.rows, value.is_not(None), value != "")
        if in_order:
            query = query.order_by(*self.pk)
        for (value,) in stream_raw(conn, query, 1000 if in_order else 10_000):
            if not paths:
                yield from_stored(value)
                continue
            try:
                found = locate(value, paths) if isinstance(value, str) else []
            except InvalidDocument:
                continue
            for spans in found:
                for _, _, field in spans:
                    if isinstance(field, str) and field and not field.startswith("kt1:"):
                        yield field

    def non_token_values(self) -> Select[tuple[Any]]:
        """The column's non-empty values that are not kt1 tokens (plaintext or legacy),
        as stored (bytes from a binary column)."""
        text = self.text
        return select(self.value).where(
            *self.rows, text.is_not(None), text != "", not_(text.like("kt1:%"))
        )

    def longest_values(self, conn: Connection, most: int = 100) -> tuple[int, list[Any]] | None:
        """The greatest length in bytes (text as UTF-8) of the column's non-token
        values, and up to ``most`` of the values that long (as :meth:`secret_values`
        gives them), counted by the database; (0, []) if it has none. None where the
        database cannot count UTF-8 bytes (an SQLite file in UTF-16)."""
        sqlite = conn.dialect.name == "sqlite"
        if sqlite and conn.exec_driver_sql("PRAGMA encoding").scalar() != "UTF-8":
            return None
        query = self.non_token_values()
        size = _Utf8Length(self.value)
        ((longest,),) = fetch_raw(conn, query.with_only_columns(func.max(size)))
        if longest is None:
            return 0, []
        values = fetch_raw(conn, query.where(size == longest).limit(most))
        return int(longest), [from_stored(value) for (value,) in values]

    def check_fits(self, need: int, what: str) -> None:
        """SchemaError, before anything is written, if a ``need``-character token does
        not fit the column's declared width."""
        if self.width is not None and need > self.width:
            raise SchemaError(
                f"[[columns]] {self.spec.name}: {what} needs a {need}-character token but "
                f"the column holds {self.width}; widen it first (docs/FORMAT.md, "
                "'Column width'). Nothing was written."
            )


def bind_columns(conn: Connection, specs: Sequence[ColumnSpec]) -> list[BoundColumn]:
    """Check each configured column exists and can hold tokens; SchemaError otherwise."""
    insp = inspect(conn)
    bound = []
    for spec in specs:
        where = f"[[columns]] {spec.name}"
        if not insp.has_table(spec.table):
            raise SchemaError(f"{where}: table {spec.table!r} does not exist in the database")
        reflected = {c["name"]: c for c in insp.get_columns(spec.table)}
        filtered = [name for name, _ in spec.where]
        for name in (*spec.primary_key, spec.column, *filtered):
            if name not in reflected:
                raise SchemaError(f"{where}: table {spec.table!r} has no column {name!r}")
        for name, values in spec.where:
            _check_filter_type(where, name, reflected[name]["type"], values)
        if spec.column in spec.primary_key:
            raise SchemaError(f"{where}: the secret column cannot be part of the primary key")
        col_type = reflected[spec.column]["type"]
        if spec.json_fields and isinstance(col_type, JSON):
            pass  # a JSON type: documents read and written as their text
        elif is_binary(col_type) and not spec.json_fields:
            pass  # BLOB/bytea: tokens stored as their ASCII bytes
        elif not isinstance(col_type, String | NullType):
            kinds = "TEXT or VARCHAR" + ("" if spec.json_fields else ", or BLOB/bytea")
            raise SchemaError(f"{where}: column type {col_type} cannot hold tokens; use {kinds}")
        width = getattr(col_type, "length", None)
        if width is not None and width < MIN_TOKEN_WIDTH:
            raise SchemaError(
                f"{where}: column is {col_type}, too narrow for keyturn tokens "
                f"(at least {MIN_TOKEN_WIDTH} characters plus 4/3 of the secret's bytes); "
                "widen it (docs/FORMAT.md, 'Column width')"
            )
        table = Table(
            spec.table,
            MetaData(),
            *(Column(n, reflected[n]["type"], primary_key=True) for n in spec.primary_key),
            Column(spec.column, col_type),
            *(Column(n, reflected[n]["type"]) for n in filtered if n not in spec.primary_key),
        )
        bound.append(BoundColumn(spec, table, width))
    return bound


def _check_filter_type(where: str, name: str, col_type: Any, values: tuple[Any, ...]) -> None:
    """A ``where`` column compared with values of its own kind: text with strings,
    integers with integers (a database would otherwise convert, or fail, per row)."""
    try:
        wanted = col_type.python_type
    except NotImplementedError:
        wanted = None
    if wanted is str or wanted is int:
        if not isinstance(values[0], wanted):
            kind = "strings" if wanted is str else "integers"
            raise SchemaError(f"{where}: `where` column {name!r} is {col_type}; list {kind} for it")
        return
    raise SchemaError(
        f"{where}: `where` column {name!r} is {col_type}; only text and integer "
        "columns can select rows"
    )


def text_of(column: Any) -> Any:
    """``column`` as text: JSON types cast (PostgreSQL's json and jsonb, a JSON
    declared column elsewhere), binary types seen as text (:class:`_BinaryText`),
    every other type as it is."""
    if isinstance(column.type, JSON):
        return cast(column, Text)
    if is_binary(column.type):
        return _BinaryText(column)
    return column


def read_as(column: Any) -> Any:
    """What the batch engine reads and compares: a binary column as its bytes (its
    compare-and-swap must match them exactly, UTF-8 or not), others as text."""
    return column if is_binary(column.type) else text_of(column)


def is_binary(col_type: Any) -> bool:
    """BLOB, bytea, BINARY, VARBINARY and the like."""
    return isinstance(col_type, _Binary | LargeBinary)


def from_stored(value: Any) -> Any:
    """A value of a binary column as the operations judge it: text if it is UTF-8
    (kt1 tokens, base64 or hex ciphertexts, text), else the bytes themselves."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw
    return value


class _BinaryText(FunctionElement[str]):
    """A binary column seen as text, for ``LIKE``, ``=``, ``length`` and ``substr``
    on the tokens and text it holds: SQLite's CAST, PostgreSQL's
    ``encode(…, 'escape')`` (one-to-one: a byte that is not printable ASCII
    becomes ``\\ooo``), MariaDB's CONVERT to utf8mb4 (bytes that are not UTF-8
    become ``?``: never a token's bytes)."""

    type = Text()
    name = "binary_text"
    inherit_cache = True


@compiles(_BinaryText)
def _binary_text(element: _BinaryText, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(_BinaryText, "postgresql")
def _binary_text_pg(element: _BinaryText, compiler: Any, **kw: Any) -> str:
    return f"encode({compiler.process(element.clauses, **kw)}, 'escape')"


@compiles(_BinaryText, "mysql")
@compiles(_BinaryText, "mariadb")
def _binary_text_mysql(element: _BinaryText, compiler: Any, **kw: Any) -> str:
    return f"CONVERT({compiler.process(element.clauses, **kw)} USING utf8mb4)"


class _Utf8Length(FunctionElement[int]):
    """A value's length in bytes as keyturn seals it: text as UTF-8 (whatever the
    server's encoding), binary as stored. SQLite's CAST counts the text in the
    file's encoding: callers check it is UTF-8."""

    type = Integer()
    name = "utf8_length"
    inherit_cache = True


def _utf8_length_parts(element: _Utf8Length, compiler: Any, **kw: Any) -> tuple[str, bool]:
    """The argument's SQL, and whether it is a binary column."""
    (argument,) = element.clauses
    return compiler.process(element.clauses, **kw), is_binary(argument.type)


@compiles(_Utf8Length)
def _utf8_length(element: _Utf8Length, compiler: Any, **kw: Any) -> str:
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


@compiles(_Utf8Length, "postgresql")
def _utf8_length_pg(element: _Utf8Length, compiler: Any, **kw: Any) -> str:
    argument, binary = _utf8_length_parts(element, compiler, **kw)
    return (
        f"octet_length({argument})" if binary else f"octet_length(convert_to({argument}, 'UTF8'))"
    )


@compiles(_Utf8Length, "mysql")
@compiles(_Utf8Length, "mariadb")
def _utf8_length_mysql(element: _Utf8Length, compiler: Any, **kw: Any) -> str:
    argument, binary = _utf8_length_parts(element, compiler, **kw)
    return f"length({argument})" if binary else f"length(CONVERT({argument} USING utf8mb4))"


def stored_as(column: Any, value: Any, dialect: Any) -> Any:
    """``value`` (text) as the column stores it: cast to PostgreSQL's json or jsonb
    (SQLite and MariaDB store JSON as text; SQLite's CAST would make it a number)."""
    if dialect.name == "postgresql" and isinstance(column.type, JSON):
        return cast(value, column.type)
    return value


def keys_in(pk: Sequence[Any], keys: Sequence[Sequence[Any]]) -> ColumnElement[bool]:
    """The rows whose primary key (columns ``pk``) is one of ``keys``."""
    if len(pk) == 1:
        return pk[0].in_([k[0] for k in keys])  # type: ignore[no-any-return]
    return tuple_(*pk).in_([tuple(k) for k in keys])


def row_filter(table: Table, spec: ColumnSpec) -> list[ColumnElement[bool]]:
    """``spec``'s ``where`` filter as conditions on ``table`` (which holds its columns)."""
    return [table.c[name].in_(values) for name, values in spec.where]


def table_of(columns: Sequence[BoundColumn]) -> Table:
    """One Table holding the primary key and every given column of the same table."""
    first = columns[0]
    if any(
        c.spec.table != first.spec.table or c.spec.primary_key != first.spec.primary_key
        for c in columns
    ):
        raise ValueError("columns must share a table and primary key")
    if any(c.spec.where != first.spec.where for c in columns):
        raise ValueError("columns must share a where filter")
    pk = [Column(c.name, c.type, primary_key=True) for c in first.pk]
    values = [Column(c.spec.column, c.value.type) for c in columns]
    names = {c.name for c in (*pk, *values)}
    extra = [Column(c.name, c.type) for c in first.table.c if c.name not in names]
    return Table(first.spec.table, MetaData(), *pk, *values, *extra)
