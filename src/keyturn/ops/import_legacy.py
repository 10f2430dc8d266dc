"""Taking over values an app encrypted with its own scheme, in place.

Each value a column's legacy reader recognises is decrypted with the legacy
key and written back as a kt1 token under the active DEK, by the same batch
engine as ``encrypt-existing`` (keyset walk, compare-and-swap), so it runs
while the app works and a run killed at any point is finished by running it
again. Before anything is written, each column's legacy key must open a
sample of its legacy values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from keyturn._core import tokens
from keyturn._core.shapes import looks_encrypted
from keyturn.db.columns import BoundColumn
from keyturn.engine.pacing import Pacing
from keyturn.engine.walk import FAILED, PK, UNKNOWN, DecideBatch
from keyturn.errors import ConfigError, InvalidToken, LegacyKeyError
from keyturn.legacy import LegacyReader
from keyturn.ops.encrypt_existing import ProgressFactory, rewrite_columns
from keyturn.ops.reports import RewriteReport
from keyturn.store import Store

IMPORTED = "imported"
ALREADY = "already_kt1"
PLAINTEXT = "plaintext"
EMPTY = "skipped_empty"
CATEGORIES = (IMPORTED, ALREADY, PLAINTEXT, EMPTY, UNKNOWN)
SAMPLE = 20
# A format without an authentication tag (aes-cbc) is sampled wider, and every
# sampled value must open: padding and UTF-8 are all that tell a wrong key.
UNAUTHENTICATED_SAMPLE = 200


def import_legacy(
    store: Store,
    *,
    dry_run: bool = False,
    include_plaintext: bool = False,
    pacing: Pacing | None = None,
    progress: ProgressFactory | None = None,
    before_write: Callable[[], None] | None = None,
) -> RewriteReport:
    """Convert every legacy value of the columns that name a legacy reader to kt1.

    Plaintext values in those columns are encrypted only with
    ``include_plaintext``; otherwise they are counted and left as they are.
    ``before_write`` runs after the key checks, before the first write.
    """
    started = time.monotonic()
    columns = [c for c in store.bound_columns() if store.legacy_reader(c.spec.name)]
    if not columns:
        raise ConfigError(
            "no [[columns]] entry names a legacy reader (`legacy = NAME`); nothing to import "
            "(docs/ADOPTING.md)"
        )
    sampled = {}
    for column in columns:
        sampled[column.spec.name] = check_legacy_key(store, column)
        _check_width(store, column, include_plaintext)
    results = rewrite_columns(
        store,
        columns,
        lambda column: _batch_decider(store, column, include_plaintext),
        dry_run=dry_run,
        pacing=pacing,
        progress=progress,
        before_write=before_write,
    )
    return RewriteReport.build(
        "import-legacy",
        CATEGORIES,
        results,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
        extra={"include_plaintext": include_plaintext, "key_check_sampled": sampled},
    )


def check_legacy_key(store: Store, column: BoundColumn) -> int:
    """Refuse unless the column's legacy key opens some of its first legacy values
    (every one of them, for a format without an authentication tag).

    Returns how many were sampled (0: the column holds no legacy value, and no
    key is needed). A wrong key opens none; a few values that fail among many
    that open are reported per row by the import instead.
    """
    reader = _reader(store, column)
    authenticated = getattr(reader.format, "authenticated", True)
    size = SAMPLE if authenticated else UNAUTHENTICATED_SAMPLE
    sample: list[str] = []
    with store.engine.connect() as conn:
        for candidate in column.secret_values(conn, in_order=True):
            if reader.recognises(candidate):
                sample.append(candidate)
                if len(sample) == size:
                    break
    if not sample:
        return 0
    reader.keys()  # LegacyKeyError names the missing variable or file
    opened = 0
    for candidate in sample:
        try:
            reader.decrypt(candidate)
        except InvalidToken:
            continue
        opened += 1
    if not authenticated and opened < len(sample):
        raise LegacyKeyError(
            f"{column.spec.name}: {len(sample) - opened} of the first {len(sample)} values in "
            f"the {reader.spec.format} layout of legacy reader {reader.spec.name} do not open "
            f"with its key(s) ({', '.join(reader.spec.key_sources)}). {reader.spec.format} has "
            "no authentication tag, so every sampled value must open (padding and UTF-8): a "
            "wrong key, padding or layout. Nothing was written."
        )
    if not opened:
        raise LegacyKeyError(
            f"{column.spec.name}: the key(s) of legacy reader {reader.spec.name} "
            f"({', '.join(reader.spec.key_sources)}) open none of the first {len(sample)} "
            "legacy values: wrong key, or a layout that differs from [[legacy]] "
            f"{reader.spec.name}. Nothing was written."
        )
    return len(sample)


def _check_width(store: Store, column: BoundColumn, include_plaintext: bool) -> None:
    """Refuse before the first write if the longest value this import would write
    does not fit.

    A built-in layout's plaintext is shorter than the value holding it, so if the
    longest value the database finds would fit as a token, every one does. Else
    each legacy value's size bounds its plaintext's, and only one whose bound
    would not fit is decrypted to know its length (on the driver's cursor, no
    logger sees it); one that fails is left for the import to report."""
    width = column.width
    if width is None or column.spec.json_fields:
        return  # a JSON document's growth is checked batch by batch, before each write
    reader = _reader(store, column)
    version = store.active_version
    longest = 0
    with store.engine.connect() as conn:
        if not getattr(reader.format, "grows", False):
            found = column.longest_values(conn, most=1)
            if found is not None and tokens.token_length(version, found[0]) <= width:
                return
        for value in column.secret_values(conn):
            length = reader.longest(value)
            if length is not None:  # a legacy value
                if tokens.token_length(version, length) > width:
                    try:
                        length = len(reader.decrypt(value))
                    except InvalidToken:
                        continue
                longest = max(longest, length)
            elif include_plaintext and not looks_encrypted(value):
                longest = max(longest, len(value.encode() if isinstance(value, str) else value))
    column.check_fits(tokens.token_length(version, longest), "the longest value")


def _reader(store: Store, column: BoundColumn) -> LegacyReader:
    reader = store.legacy_reader(column.spec.name)
    assert reader is not None  # only columns with a reader get here
    return reader


def _batch_decider(store: Store, column: BoundColumn, include_plaintext: bool) -> DecideBatch:
    """Each value of a batch judged (a legacy one opened), then every plaintext to
    seal sealed in one call (``Store.encrypt_many``: one nonce draw)."""
    spec = column.spec
    reader = _reader(store, column)
    fixed = spec.context(()) if spec.bind == "column" else None

    def decide(pks: Sequence[PK], values: Sequence[Any]) -> tuple[list[str], list[str | None]]:
        categories: list[str] = []
        news: list[str | None] = [None] * len(values)
        todo: list[int] = []
        plaintexts: list[bytes] = []
        for j, value in enumerate(values):
            category, plaintext = _judge(reader, value, include_plaintext)
            categories.append(category)
            if plaintext is not None:
                todo.append(j)
                plaintexts.append(plaintext)
        if todo:
            contexts = fixed or [spec.context(pks[j]) for j in todo]
            for j, token in zip(todo, store.encrypt_many(plaintexts, contexts), strict=True):
                news[j] = token
        return categories, news

    return decide


def _judge(reader: LegacyReader, value: Any, include_plaintext: bool) -> tuple[str, bytes | None]:
    """A value's category, and the plaintext to seal for it (None: left as it is)."""
    if value is None or value == "":
        return EMPTY, None
    if not isinstance(value, str | bytes):  # bytes: a binary column's, not UTF-8
        return FAILED, None
    if type(value) is str and tokens.version_of(value) is not None:
        return ALREADY, None
    try:
        plaintext = reader.open(value)
    except InvalidToken:
        return FAILED, None  # listed by primary key; the value is left as it is
    if plaintext is not None:
        return IMPORTED, plaintext
    if looks_encrypted(value):
        return UNKNOWN, None  # another scheme's ciphertext: never sealed here
    if include_plaintext:
        return PLAINTEXT, value.encode() if isinstance(value, str) else value
    return PLAINTEXT, None
