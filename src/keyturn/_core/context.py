"""The AAD context a column's token is bound to (see docs/FORMAT.md, "Context").

``table.column`` for a column-bound value; ``table.column#<key>`` for a
row-bound one, the primary key's parts joined by ``,`` with every ``\\`` and
``,`` inside a part escaped by a backslash. So ("a,b", "c") and ("a", "b,c")
are different rows with different contexts, and a key without either
character has the same bytes as before escaping existed (0.1), so its tokens
keep opening. A token written under 0.1's unescaped context for a key that
has one of them still opens through :func:`unescaped_row_context`, and the
next rotation rewrites it under the escaped one.

A field inside a JSON column adds its path: ``table.column$.apiKey``, or
``table.column#<key>$.apiKey`` bound to the row. A canonical path holds no
``$`` after its first character (see :mod:`keyturn._core.jsonpath`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def column_context(table: str, column: str) -> str:
    return f"{table}.{column}"


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(",", "\\,")


def column_of(context: str) -> str:
    """The ``table.column`` a context belongs to (without row key or JSON path)."""
    return context.split("#", 1)[0].split("$", 1)[0]


def row_context(table: str, column: str, pk: Sequence[Any]) -> str:
    """The context of a row-bound value in the row whose primary key is ``pk``."""
    return f"{table}.{column}#" + ",".join(_escape(str(v)) for v in pk)


def unescaped_row_context(table: str, column: str, pk: Sequence[Any]) -> str | None:
    """0.1's ambiguous context for ``pk``, where it differs from :func:`row_context`."""
    parts = [str(v) for v in pk]
    if not any("," in p or "\\" in p for p in parts):
        return None
    return f"{table}.{column}#" + ",".join(parts)
