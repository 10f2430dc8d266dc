"""Encrypting a column's existing plaintext values in place.

Idempotent by construction: values that are already kt1 tokens are checked
(they must decrypt) and counted, never re-encrypted, and every write is a
compare-and-swap, so a run killed at any point is finished by running it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Connection, func, select

from keyturn._core import tokens
from keyturn._core.shapes import api_keys, looks_encrypted, short_texts
from keyturn.db.columns import BoundColumn
from keyturn.engine.fields import batch_decider
from keyturn.engine.pacing import Pacing
from keyturn.engine.walk import (
    FAILED,
    PK,
    UNKNOWN,
    ColumnResult,
    Decide,
    DecideBatch,
    TableRewriter,
    group_by_table,
)
from keyturn.errors import InvalidToken, UnknownKeyVersion
from keyturn.legacy import LegacyReader
from keyturn.ops.reports import RewriteReport
from keyturn.store import Store

ENCRYPTED = "encrypted"
ALREADY = "already_encrypted"
EMPTY = "skipped_empty"
LEGACY = "skipped_legacy"
CATEGORIES = (ENCRYPTED, ALREADY, EMPTY, LEGACY, UNKNOWN)

ProgressFactory = Callable[[str, int], Callable[[int], None]]
_HEADER = tokens.MAGIC + ":"


def encrypt_existing(
    store: Store,
    *,
    dry_run: bool = False,
    include_unknown: bool = False,
    pacing: Pacing | None = None,
    progress: ProgressFactory | None = None,
    before_write: Callable[[], None] | None = None,
) -> RewriteReport:
    """Encrypt the plaintext of every configured column; NULL and '' stay as they are,
    and so do values a column's legacy reader recognises (see ``import_legacy``) and
    values shaped like another scheme's ciphertext (``unknown``, listed by primary
    key), unless ``include_unknown`` says they are plaintext.
    ``before_write`` runs after the checks, before the first write (the audit entry)."""
    started = time.monotonic()
    columns = store.bound_columns()
    for column in columns:
        _check_width(store, column, include_unknown)
    results = rewrite_columns(
        store,
        columns,
        lambda column: _batch_decider(store, column, include_unknown),
        dry_run=dry_run,
        pacing=pacing,
        progress=progress,
        before_write=before_write,
    )
    return RewriteReport.build(
        "encrypt-existing",
        CATEGORIES,
        results,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
        extra={"include_unknown": include_unknown},
    )


def rewrite_columns(
    store: Store,
    columns: list[BoundColumn],
    decider: Callable[[BoundColumn], DecideBatch],
    *,
    dry_run: bool = False,
    pacing: Pacing | None = None,
    progress: ProgressFactory | None = None,
    before_write: Callable[[], None] | None = None,
    empty: str = EMPTY,
) -> list[ColumnResult]:
    """One batch-engine pass per table over ``columns``, with ``decider(column)``
    deciding a batch of values (for a JSON column, per field; ``empty`` counts a
    NULL document or field); :func:`each_value` makes one from a per-value one."""
    if before_write is not None and not dry_run:
        before_write()
    results = []
    for group in group_by_table(columns):
        rewriter = TableRewriter(
            store.engine,
            group,
            [batch_decider(c, decider, empty) for c in group],
            dry_run=dry_run,
            pacing=pacing,
            progress=progress(group_label(group), count_rows(store, group[0]))
            if progress
            else None,
        )
        results.extend(rewriter.run())
    return results


def group_label(group: list[BoundColumn]) -> str:
    """``users.secret`` or ``users.{a,b}`` for a progress line."""
    if len(group) == 1:
        return group[0].spec.name
    return f"{group[0].spec.table}.{{{','.join(c.spec.column for c in group)}}}"


def count_rows(store: Store, column: BoundColumn, conn: Connection | None = None) -> int:
    """Rows of a column (its table, or the rows its ``where`` selects) for progress
    lines, inside ``conn`` if given."""
    query = select(func.count()).select_from(column.table).where(*column.rows)
    if conn is not None:
        return int(conn.execute(query).scalar_one())
    with store.engine.connect() as own:
        return int(own.execute(query).scalar_one())


def _batch_decider(store: Store, column: BoundColumn, include_unknown: bool) -> DecideBatch:
    """The batch's plaintext text sealed in one call (``Store.encrypt_many``: one
    nonce draw). The usual batch, NULLs, '' and plaintext, is judged at once
    (:func:`_plain_positions`); any other is decided value by value, as
    :func:`_decider` does, after its tokens are opened together."""
    one = _decider(store, column, include_unknown)
    spec = column.spec
    reader = store.legacy_reader(spec.name)
    fixed = spec.context(()) if spec.bind == "column" else None

    def contexts(pks: Sequence[PK], todo: list[int]) -> Sequence[str] | str:
        return fixed or [spec.context(pks[j]) for j in todo]

    def one_by_one(
        pks: Sequence[PK], values: Sequence[Any]
    ) -> tuple[list[str], list[str | None], list[int]]:
        categories: list[str] = []
        news: list[str | None] = [None] * len(values)
        todo: list[int] = []
        # The tokens that open here, opened together (as verify does).
        opened = store.keyring.opens(values, fixed) if fixed is not None else [False] * len(values)
        for j, value in enumerate(values):
            if opened[j]:
                categories.append(ALREADY)
                continue
            if (
                type(value) is str
                and value
                and not value.startswith(_HEADER)
                and _sealed(value, reader, include_unknown)
            ):
                categories.append(ENCRYPTED)
                todo.append(j)
                continue
            category, news[j] = one(pks[j], value)
            categories.append(category)
        return categories, news, todo

    def decide(pks: Sequence[PK], values: Sequence[Any]) -> tuple[list[str], list[str | None]]:
        todo = _plain_positions(values, include_unknown) if reader is None else None
        if todo is None:
            categories, news, todo = one_by_one(pks, values)
        elif len(todo) == len(values):  # every value sealed: the tokens are the news
            sealed = store.encrypt_many([v.encode() for v in values], contexts(pks, todo))
            return [ENCRYPTED] * len(values), cast("list[str | None]", sealed)
        else:
            categories = [ENCRYPTED if v else EMPTY for v in values]
            news = [None] * len(values)
        if todo:
            plaintexts = [values[j].encode() for j in todo]
            sealed = store.encrypt_many(plaintexts, contexts(pks, todo))
            for j, token in zip(todo, sealed, strict=True):
                news[j] = token
        return categories, news

    return decide


def _plain_positions(values: Sequence[Any], include_unknown: bool) -> list[int] | None:
    """The usual batch, judged at once: if every value is NULL, '' or text not shaped
    like ciphertext (or ``include_unknown``) and not led by a kt1 header, the
    positions of the texts to seal; None says: decide value by value."""
    kinds = set(map(type, values))
    if kinds == {str} and all(values):
        todo, texts = list(range(len(values))), values
    elif kinds <= {str, type(None)}:
        todo = [j for j, v in enumerate(values) if v]
        texts = [values[j] for j in todo]
    else:
        return None
    joined = "\n".join(texts)  # a value holding "\nkt1:" only sends the batch the long way
    if (
        not include_unknown
        and not api_keys(texts, joined)
        and not short_texts(texts)
        and any(map(looks_encrypted, texts))
    ):
        return None
    # Without a ":" (API keys, most passwords) no text holds a header: one quick scan.
    if ":" in joined and (joined.startswith(_HEADER) or "\n" + _HEADER in joined):
        return None
    return todo


def _sealed(value: str | bytes, reader: LegacyReader | None, include_unknown: bool) -> bool:
    """Whether encrypt-existing seals a non-empty value that is not a kt1 token:
    not the app's legacy ciphertext, nor shaped like another scheme's (unless
    ``include_unknown``)."""
    if reader is not None and reader.recognises(value):
        return False
    return include_unknown or not looks_encrypted(value)


def _decider(store: Store, column: BoundColumn, include_unknown: bool) -> Decide:
    spec = column.spec
    reader = store.legacy_reader(spec.name)

    def decide(pk: PK, value: Any) -> tuple[str, str | None]:
        if value is None or value == "":
            return EMPTY, None
        if not isinstance(value, str | bytes):  # bytes: a binary column's, not UTF-8
            return FAILED, None
        context = spec.context(pk)
        if type(value) is str and tokens.version_of(value) is not None:
            try:
                spec.open_token(lambda t, c: store.decrypt_bytes(t, context=c), value, pk)
            except (InvalidToken, UnknownKeyVersion):
                # Looks like a token but does not open: never guess, leave it.
                return FAILED, None
            return ALREADY, None
        if reader is not None and reader.recognises(value):
            # Already encrypted, by the app's old scheme: encrypting it again would
            # bury it (the double-encryption bug); `import-legacy` converts it.
            return LEGACY, None
        if not include_unknown and looks_encrypted(value):
            return UNKNOWN, None
        return ENCRYPTED, store.encrypt(value, context=context)

    return decide


def _check_width(store: Store, column: BoundColumn, include_unknown: bool) -> None:
    """Refuse before writing anything if the longest plaintext's token cannot fit.

    The database finds the longest values; only if none of them is to be sealed
    (they are another scheme's ciphertext) are all the values read, on the
    driver's cursor (no logger sees them)."""
    if column.width is None or column.spec.json_fields:
        return  # a JSON document's growth is checked batch by batch, before each write
    reader = store.legacy_reader(column.spec.name)
    with store.engine.connect() as conn:
        found = column.longest_values(conn)
        if found is not None and (
            not found[1] or any(_sealed(v, reader, include_unknown) for v in found[1])
        ):
            longest = found[0]
        else:
            longest = 0
            for value in column.secret_values(conn):
                size = len(value.encode() if isinstance(value, str) else value)
                if size > longest and _sealed(value, reader, include_unknown):
                    longest = size
    column.check_fits(tokens.token_length(store.active_version, longest), "the longest value")
