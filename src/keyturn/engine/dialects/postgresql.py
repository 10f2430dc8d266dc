"""PostgreSQL: the swap as ``UPDATE … FROM unnest(arrays)``, each array sent as one
text, and the planner settings the walk's statements need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Column, Table

from keyturn.engine.dialects import swap_names

# A PostgreSQL swap has no packet limit to respect: a whole batch is one
# statement unless its values are long.
ARRAY_ROWS = 20_000
ARRAY_CHARS = 16 * 1024 * 1024

# PostgreSQL planner settings for the rest of one transaction. Without them, on
# a table of a few hundred thousand rows (and more so one never analyzed), the
# planner costs index lookups as disk reads and picks whole-table plans:
# - a swap of a few thousand rows is a nested loop of primary-key lookups, not a
#   hash of the whole table (6x slower per statement);
# - a keyset read of 20,000 rows walks the primary key's index in order, not a
#   (parallel) scan of the whole table and a sort spilled to disk (10x slower).
# (docs/PERFORMANCE.md)
NESTED_LOOPS = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
INDEX_ORDER = "SET LOCAL enable_sort = off"
# No JIT compiling for the walk's reads: a closing sweep's read of the last
# 14,600 keys of a 1,000,000-row table, costed above jit_above_cost, took 145 ms
# with it and 10 ms without (docs/PERFORMANCE.md).
NO_JIT = "SET LOCAL jit = off"
# A closing sweep over the rows the walk passed expects few matches: it scans the
# table and sorts them. On a table analyzed before the rotation (any table in use:
# autovacuum analyzes it), the statistics say every row matches, and the planner
# walks the primary key's index in order instead, to every version of every row:
# at 1,000,000 rows the sweep's reads took 780-863 ms of server time, against
# 211-249 ms with no index scan (docs/PERFORMANCE.md).
NO_INDEX_SCAN = "SET LOCAL enable_indexscan = off"
# Read with each row: the id of the transaction that wrote its current version.
# A swap that carries it back (``t.xmin = v.x``) misses a row anyone wrote since,
# whatever column changed (stricter than comparing the values read; a missed row
# is re-read and retried), and sends one number a row instead of every token
# read (docs/PERFORMANCE.md). Read as it is: the drivers hand an xid back as text
# (or a number), and a cast to text cost the server 1.5 ms a 20,000-row read.
XMIN = "xmin"


def array_of(values: Sequence[Any], kind: str) -> tuple[str, str] | None:
    """One column of a PostgreSQL swap as an array of type ``kind``: the SQL that
    makes it from one bound text, and that text. Ints, text and UUIDs only (None
    for other types): psycopg adapts a list element by element, 40x slower."""
    if values and type(values[0]) is str:
        try:
            body = ",".join(values)  # a TypeError if any value is not text
        except TypeError:
            pass
        else:
            if body and body.count(",") == len(values) - 1:  # not one "": {} split
                if kind == "xid" and body.isascii() and body.replace(",", "").isdigit():
                    # xmins: digits need no quoting, and the server parses an xid
                    # literal faster than it splits and casts each text (3.1 ms
                    # against 4.2 ms for 20,000; docs/PERFORMANCE.md).
                    return "%s::xid[]", "{" + body + "}"
                # No value holds a comma (tokens never do): split by the server, which
                # parses it 3x faster than an array literal (docs/PERFORMANCE.md).
                return f"string_to_array(%s, ',')::{kind}[]", body
            return f"%s::{kind}[]", "{" + ",".join(map(_element, values)) + "}"
    kinds = set(map(type, values))
    if kinds == {int}:
        return f"%s::{kind}[]", "{" + str(list(values))[1:-1] + "}"  # "{1, 2}" parses
    if kinds <= {str, UUID}:
        # An array literal with every element quoted, so "" and "NULL" stay text.
        return f"%s::{kind}[]", "{" + ",".join(_element(str(v)) for v in values) + "}"
    return None


def _is_json(column: Column[Any]) -> bool:
    return isinstance(column.type, JSON)


def _element(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def swap_sql(
    dialect: Any,
    table: Table,
    pk: Sequence[Column[Any]],
    values: Sequence[Column[Any]],
    indexes: tuple[int, ...],
    filter: Sequence[tuple[str, Sequence[Any]]] = (),
    by_xmin: bool = False,
) -> tuple[str, list[str], str]:
    """``UPDATE t SET col = v.n FROM unnest(<arrays>) AS v(k…, o…, n…) WHERE
    t.pk = v.k AND t.col = v.o``, in pieces: the text before the arrays, the
    type of each array, the text after (with a placeholder for each value of
    ``filter``). A deleted row joins nothing, so it is never brought back.
    ``by_xmin``: the rows carry the xmin each was read with, not the values
    read (``v(k…, x, n…)``, ``t.xmin = v.x``)."""
    swap = swap_names(dialect, table, pk, indexes, filter, compare=not by_xmin)
    quote = swap.quote
    types = [str(c.type.compile(dialect=dialect)) for c in pk]
    types += ["xid"] if by_xmin else ["text"] * len(indexes)
    types += ["text"] * len(indexes)
    names = swap.names[: len(pk)] + ["x"] * by_xmin + swap.names[len(pk) :]
    # A JSON column is compared as text and written cast to its own type.
    json = {i: str(values[i].type.compile(dialect=dialect)) for i in indexes if _is_json(values[i])}
    unchanged = [
        f"t.{quote(values[i].name)}{'::text' if i in json else ''} = v.o{i}" for i in indexes
    ]
    if by_xmin:
        unchanged = ["t.xmin = v.x"]
    sets = [
        f"{quote(values[i].name)} = v.n{i}" + (f"::{json[i]}" if i in json else "") for i in indexes
    ]
    head = f"UPDATE {swap.table} AS t SET {', '.join(sets)} FROM unnest("
    where = " AND ".join(swap.same_row + unchanged + swap.selected)
    tail = f") AS v({', '.join(names)}) WHERE {where}"
    return head, types, tail
