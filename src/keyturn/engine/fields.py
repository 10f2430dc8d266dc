"""JSON columns: an operation's per-value decisions applied to the fields of each
document, the rest of the document left exactly as it was.

Each field is decided as a value of its own (its spec's context ends with its
path), all of a batch's values for one path in one call, so an operation's
batch path (rotate's ``reencrypt_many``) serves fields too. A document's
category is one ``<path>\\t<category>`` per field it holds; a document that is
not JSON is ``failed``, and a field that holds neither a string nor null is
``<path>\\tfailed``: reported with the row's key, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from keyturn._core.jsonpath import locate, splice
from keyturn.config import ColumnSpec
from keyturn.db.columns import BoundColumn
from keyturn.engine.walk import FAILED, PK, Category, DecideBatch
from keyturn.errors import InvalidDocument

SEPARATOR = "\t"


def field_category(path: str, category: str) -> str:
    return f"{path}{SEPARATOR}{category}"


def each_field(
    spec: ColumnSpec, decider: Callable[[ColumnSpec], DecideBatch], empty: str
) -> DecideBatch:
    """A batch decider for the JSON column ``spec``: ``decider(field spec)`` decides
    each configured field's string values; a NULL or '' document, and a field
    holding null, count as ``empty``."""
    fields = spec.fields()
    paths = [path for path, _ in fields]
    decides = [decider(field) for _, field in fields]
    empty_doc = (empty,)
    failed_doc = (FAILED,)

    def decide(
        pks: Sequence[PK], documents: Sequence[Any]
    ) -> tuple[list[Category], list[str | None]]:
        categories: list[list[str]] = [[] for _ in documents]
        texts: list[str] = [""] * len(documents)
        # Per path: the documents' string values there, and where each one is.
        todo: list[tuple[list[PK], list[str], list[tuple[int, int, int]]]] = [
            ([], [], []) for _ in paths
        ]
        for j, document in enumerate(documents):
            if document is None or document == "":
                categories[j] = list(empty_doc)
                continue
            if isinstance(document, bytes | bytearray):
                try:
                    document = bytes(document).decode()
                except UnicodeDecodeError:
                    categories[j] = list(failed_doc)
                    continue
            if not isinstance(document, str):
                categories[j] = list(failed_doc)
                continue
            texts[j] = document
            try:
                found = locate(document, paths)
            except InvalidDocument:
                categories[j] = list(failed_doc)
                continue
            for i, spans in enumerate(found):
                text = paths[i].text
                for start, end, value in spans:
                    if value is None:
                        categories[j].append(field_category(text, empty))
                    elif isinstance(value, str) and end >= 0:
                        keys, values, where = todo[i]
                        keys.append(pks[j])
                        values.append(value)
                        where.append((j, start, end))
                    else:
                        categories[j].append(field_category(text, FAILED))
        edits: list[list[tuple[int, int, str]]] = [[] for _ in documents]
        for i, (keys, values, where) in enumerate(todo):
            if not values:
                continue
            text = paths[i].text
            field_categories, news = decides[i](keys, values)
            for (j, start, end), category, new in zip(where, field_categories, news, strict=True):
                assert isinstance(category, str)  # a field is a plain value
                categories[j].append(field_category(text, category))
                if new is not None:
                    edits[j].append((start, end, new))
        out: list[str | None] = [None] * len(documents)
        for j, changes in enumerate(edits):
            if changes:
                out[j] = splice(texts[j], changes)
        return [tuple(c) for c in categories], out

    return decide


def batch_decider(
    column: BoundColumn, decider: Callable[[BoundColumn], DecideBatch], empty: str
) -> DecideBatch:
    """``decider(column)`` for a plain column; for a JSON column, the same decider
    applied to each field (a column whose spec is the field's)."""
    if not column.spec.json_fields:
        return decider(column)
    return each_field(column.spec, lambda field: decider(replace(column, spec=field)), empty)


def split_counts(name: str, counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """A JSON column's counts by entry: the document-level ones under ``name``, each
    field's under ``name`` + its path (``creds.config$.apiKey``)."""
    out: dict[str, dict[str, int]] = {name: {}}
    for key, n in counts.items():
        path, sep, category = key.rpartition(SEPARATOR)
        entry = out.setdefault(name + path, {}) if sep else out[name]
        entry[category] = entry.get(category, 0) + n
    return out
