"""What differs per database in the engine's writes: which dialects take which swap.

SQLite runs SQLAlchemy's compiled compare-and-swap with executemany;
PostgreSQL and MariaDB/MySQL have faster statements of their own
(:mod:`.postgresql`, :mod:`.mysql`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table

# PyMySQL's executemany sends an UPDATE row by row: MariaDB/MySQL get one UPDATE
# joined with a list of rows instead.
BULK = ("mysql", "mariadb")
# psycopg pipelines executemany, but adapts each row's parameters in Python,
# which the deciding thread then waits for; PostgreSQL gets an UPDATE joined
# with unnest() of arrays, each sent as one text (docs/PERFORMANCE.md).
ARRAY = ("postgresql",)
# Where a batch is written while the next is read and decided. Not SQLite: in its
# rollback journal our next read holds off the previous batch's commit, and the
# busy handler sleeps (measured slower, docs/PERFORMANCE.md).
PIPELINED = ("postgresql", "mysql", "mariadb")
# Where a pipelined walk reads each batch with its rows locked (READ COMMITTED,
# ``FOR UPDATE``) and writes it in that same transaction: no one can change the
# rows in between, so the swap need not carry and compare the values read. An
# InnoDB row lock costs the server next to nothing; the compare cost it a fifth
# to a third more CPU than the bare UPDATE (docs/PERFORMANCE.md). Not
# PostgreSQL: its row locks are written to the table, dearer than the compare.
LOCKED_READS = ("mysql", "mariadb")
# Where a walk reads each batch on the connection that then writes it, noting the
# database's change counter (SQLite's data_version) in the read's transaction.
# If no other connection has committed since, when the write's transaction has
# the write lock, the rows are as read and the swap need not compare the values
# (they cost a fifth of the bare UPDATE's time, docs/PERFORMANCE.md); else it does.
UNCHANGED_READS = ("sqlite",)


@dataclass(frozen=True)
class SwapNames:
    """What both server swaps name alike: the quoted table ``t``; the columns of the
    joined rows ``v`` (``k…`` the key, ``o…`` the values read unless the rows are
    locked since, ``n…`` those to write);
    the join of ``t`` and ``v`` on the primary key; and the ``where`` filter's
    conditions on ``t``, with a ``%s`` for each of its values, bound after all others."""

    table: str
    names: list[str]
    same_row: list[str]
    quote: Callable[[str], str]
    selected: list[str]


def swap_names(
    dialect: Any,
    table: Table,
    pk: Sequence[Column[Any]],
    indexes: tuple[int, ...],
    filter: Sequence[tuple[str, Sequence[Any]]] = (),
    compare: bool = True,
) -> SwapNames:
    # The preparer escapes a % in a name already (%%), as the driver's
    # placeholders need: the statements are always run with parameters.
    preparer = dialect.identifier_preparer
    quote = preparer.quote
    keys = [f"k{j}" for j in range(len(pk))]
    olds = [f"o{i}" for i in indexes] if compare else []
    names = keys + olds + [f"n{i}" for i in indexes]
    same_row = [f"t.{quote(c.name)} = v.{k}" for c, k in zip(pk, keys, strict=True)]
    selected = [
        f"t.{quote(name)} IN ({', '.join(['%s'] * len(values))})" for name, values in filter
    ]
    return SwapNames(preparer.format_table(table), names, same_row, quote, selected)
