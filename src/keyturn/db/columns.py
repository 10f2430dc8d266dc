"""Binding configured columns to the live schema, with checks that name the entry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Select, String, Table, inspect, not_, select
from sqlalchemy.types import NullType

from keyturn._core import tokens
from keyturn.config import ColumnSpec
from keyturn.errors import SchemaError

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

    def non_token_values(self) -> Select[tuple[Any]]:
        """The column's non-empty values that are not kt1 tokens (plaintext or legacy)."""
        value = self.value
        return select(value).where(value.is_not(None), value != "", not_(value.like("kt1:%")))

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
        for name in (*spec.primary_key, spec.column):
            if name not in reflected:
                raise SchemaError(f"{where}: table {spec.table!r} has no column {name!r}")
        if spec.column in spec.primary_key:
            raise SchemaError(f"{where}: the secret column cannot be part of the primary key")
        col_type = reflected[spec.column]["type"]
        if not isinstance(col_type, String | NullType):
            raise SchemaError(
                f"{where}: column type {col_type} cannot hold text tokens; use TEXT or VARCHAR"
            )
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
        )
        bound.append(BoundColumn(spec, table, width))
    return bound


def table_of(columns: Sequence[BoundColumn]) -> Table:
    """One Table holding the primary key and every given column of the same table."""
    first = columns[0]
    if any(
        c.spec.table != first.spec.table or c.spec.primary_key != first.spec.primary_key
        for c in columns
    ):
        raise ValueError("columns must share a table and primary key")
    pk = [Column(c.name, c.type, primary_key=True) for c in first.pk]
    values = [Column(c.spec.column, c.value.type) for c in columns]
    return Table(first.spec.table, MetaData(), *pk, *values)
