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

from keyturn._core.jsonpath import Found, locate, quick_finder, splice, token_splicer
from keyturn.config import ColumnSpec
from keyturn.db.columns import BoundColumn, from_stored
from keyturn.engine.walk import FAILED, PK, Category, DecideBatch, DocumentNews
from keyturn.errors import InvalidDocument

SEPARATOR = "\t"
# A field's edits in a batch: its spec, the rows, the tokens replaced, those written.
Changed = tuple[ColumnSpec, list[int], list[str], list[str]]


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
    # Each path's categories, spelled once: "$.apiKey\trotated".
    names: list[dict[str, str]] = [{} for _ in paths]

    def name(i: int, category: str) -> str:
        spelled = names[i].get(category)
        if spelled is None:
            spelled = names[i][category] = field_category(paths[i].text, category)
        return spelled

    quick = quick_finder(paths)
    every = token_splicer(len(paths))

    def decide(
        pks: Sequence[PK], documents: Sequence[Any]
    ) -> tuple[list[Category], list[str | None]]:
        n = len(documents)
        # Per field: (its spec, the rows edited, the tokens replaced, those written).
        changed: list[Changed] = [(field, [], [], []) for _, field in fields]
        found = list(map(quick, documents)) if quick else [None] * n
        if None not in found:  # the usual batch
            categories, out = decide_found(pks, documents, found, range(n), changed)  # type: ignore[arg-type]
            return categories, DocumentNews(out, [c for c in changed if c[1]])
        categories = [()] * n
        out = [None] * n
        fast = [j for j, f in enumerate(found) if f is not None]
        if fast:
            decided, news = decide_found(
                [pks[j] for j in fast],
                [documents[j] for j in fast],
                [found[j] for j in fast],  # type: ignore[misc]
                fast,
                changed,
            )
            for j, category, new in zip(fast, decided, news, strict=True):
                categories[j], out[j] = category, new
        rest = [j for j, f in enumerate(found) if f is None]
        decide_any(
            [pks[j] for j in rest], [documents[j] for j in rest], rest, categories, out, changed
        )
        return categories, DocumentNews(out, [c for c in changed if c[1]])

    def decide_found(
        pks: Sequence[PK],
        documents: Sequence[str],
        found: Sequence[list[Found]],
        at: Sequence[int],
        changed: list[Changed],
    ) -> tuple[list[Category], list[str | None]]:
        """Documents whose fields :func:`quick_finder` found, one string per path each
        (``at``: their rows in the batch): their categories and new text."""
        named: list[list[str]] = []
        news: list[list[str | None]] = []
        for i, decide_field in enumerate(decides):
            values = [f[i][2] for f in found]
            decided, new = decide_field(pks, values)
            if decided and decided.count(decided[0]) == len(decided):  # all one category
                named.append([name(i, decided[0])] * len(decided))  # type: ignore[arg-type]
            else:
                spelled = names[i]
                named.append([spelled.get(c) or name(i, c) for c in decided])  # type: ignore[arg-type]
            news.append(new)
            _, rows, olds, tokens = changed[i]
            if None not in new:
                rows += at
                olds += values
                tokens += new  # type: ignore[arg-type]
            else:
                for j, old, token in zip(at, values, new, strict=True):
                    if token is not None:
                        rows.append(j)
                        olds.append(old)
                        tokens.append(token)
        categories: list[Category] = list(zip(*named, strict=True))
        if every is not None and all(None not in new for new in news):
            return categories, list(map(every, documents, found, *news))  # every field changed
        out: list[str | None] = []
        for document, fields_, news_ in zip(documents, found, zip(*news, strict=True), strict=True):
            edits = [
                (f[0], f[1], new) for f, new in zip(fields_, news_, strict=True) if new is not None
            ]
            out.append(splice(document, edits, tokens=True) if edits else None)
        return categories, out

    def decide_any(
        pks: Sequence[PK],
        documents: Sequence[Any],
        at: Sequence[int],
        categories: list[Category],
        out: list[str | None],
        changed: list[Changed],
    ) -> None:
        """Any documents: NULL, not JSON, fields missing, null, not strings, or many."""
        n = len(documents)
        cats: list[list[str]] = [[] for _ in range(n)]
        texts: list[str] = [""] * n
        # Per path: where its string fields stand (document, start, end), and their values.
        where: list[list[tuple[int, int, int]]] = [[] for _ in paths]
        values: list[list[str]] = [[] for _ in paths]
        for j, document in enumerate(documents):
            if type(document) is not str:
                document = _as_text(document)
                if document is None:
                    cats[j].append(empty if documents[j] is None else FAILED)
                    continue
            if not document:
                cats[j].append(empty)
                continue
            texts[j] = document
            try:
                located = locate(document, paths)
            except InvalidDocument:
                cats[j].append(FAILED)
                continue
            for i, spans in enumerate(located):
                for start, end, value in spans:
                    if type(value) is str and end >= 0:
                        where[i].append((j, start, end))
                        values[i].append(value)
                    else:
                        cats[j].append(name(i, empty if value is None else FAILED))
        edits: list[list[tuple[int, int, str]]] = [[] for _ in range(n)]
        for i, decide_field in enumerate(decides):
            if not values[i]:
                continue
            decided, news = decide_field([pks[j] for j, _, _ in where[i]], values[i])
            _, rows, olds, tokens = changed[i]
            for (j, start, end), old, category, new in zip(
                where[i], values[i], decided, news, strict=True
            ):
                cats[j].append(name(i, category))  # type: ignore[arg-type]
                if new is not None:
                    edits[j].append((start, end, new))
                    rows.append(at[j])
                    olds.append(old)
                    tokens.append(new)
        for k, j in enumerate(at):
            categories[j] = tuple(cats[k])
            if edits[k]:
                out[j] = splice(texts[k], edits[k], tokens=True)

    return decide


def _as_text(document: Any) -> str | None:
    """A document read as bytes decoded; None for NULL and anything else."""
    if isinstance(document, bytes | bytearray):
        try:
            return bytes(document).decode()
        except UnicodeDecodeError:
            return None
    return None


def batch_decider(
    column: BoundColumn, decider: Callable[[BoundColumn], DecideBatch], empty: str
) -> DecideBatch:
    """``decider(column)`` for a plain column; for a JSON column, the same decider
    applied to each field (a column whose spec is the field's); for a binary
    column, deciding values as :func:`from_stored` gives them, tokens written as
    bytes."""
    if column.binary:
        return _as_bytes(decider(column))
    if not column.spec.json_fields:
        return decider(column)
    return each_field(column.spec, lambda field: decider(replace(column, spec=field)), empty)


def _as_bytes(decide: DecideBatch) -> DecideBatch:
    def decide_binary(
        pks: Sequence[PK], values: Sequence[Any]
    ) -> tuple[Sequence[Category], list[Any]]:
        categories, news = decide(pks, [from_stored(v) for v in values])
        return categories, [None if new is None else new.encode() for new in news]

    return decide_binary


def split_counts(name: str, counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """A JSON column's counts by entry: the document-level ones under ``name``, each
    field's under ``name`` + its path (``creds.config$.apiKey``)."""
    out: dict[str, dict[str, int]] = {name: {}}
    for key, n in counts.items():
        path, sep, category = key.rpartition(SEPARATOR)
        entry = out.setdefault(name + path, {}) if sep else out[name]
        entry[category] = entry.get(category, 0) + n
    return out
