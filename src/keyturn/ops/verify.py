"""Decrypting every configured value to prove it still opens, without printing any.

The check to run before and after any migration: each kt1 token must open
under its key version and context; each legacy value must open with its
legacy key where that key is present (otherwise it is counted as unchecked).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from keyturn._core import tokens
from keyturn._core.shapes import looks_encrypted
from keyturn.db.columns import BoundColumn
from keyturn.engine.walk import FAILED, PK, UNKNOWN, Decide, DecideBatch
from keyturn.errors import InvalidToken, LegacyKeyError, UnknownKeyVersion
from keyturn.ops.encrypt_existing import ProgressFactory, rewrite_columns
from keyturn.ops.reports import RewriteReport
from keyturn.store import Store

OK = "ok"
LEGACY_OK = "legacy_ok"
LEGACY_UNCHECKED = "legacy_unchecked"
PLAINTEXT = "plaintext"
EMPTY = "empty"
CATEGORIES = (OK, LEGACY_OK, LEGACY_UNCHECKED, PLAINTEXT, UNKNOWN, EMPTY)


def verify(store: Store, *, progress: ProgressFactory | None = None) -> RewriteReport:
    """Decrypt every configured value; failures are listed by table and primary key."""
    started = time.monotonic()
    store.reload()
    columns = store.bound_columns()
    missing_keys: dict[str, str] = {}  # column: why its legacy key cannot be used
    for column in columns:
        reader = store.legacy_reader(column.spec.name)
        if reader is not None:
            try:
                reader.keys()
            except LegacyKeyError as exc:
                missing_keys[column.spec.name] = str(exc)
    results = rewrite_columns(
        store,
        columns,
        lambda column: _batch_decider(store, column, column.spec.name not in missing_keys),
        dry_run=True,
        progress=progress,
        empty=EMPTY,
    )
    return RewriteReport.build(
        "verify",
        CATEGORIES,
        results,
        dry_run=False,
        seconds=time.monotonic() - started,
        extra={"legacy_keys_missing": missing_keys},
    )


def _batch_decider(store: Store, column: BoundColumn, legacy_keys: bool) -> DecideBatch:
    """Tokens of a column-bound column opened together (``Keyring.opens``: each
    version's AAD built once); every other value, and a token that does not open
    there, as :func:`_decider` decides it (which names the reason)."""
    one = _decider(store, column, legacy_keys)
    spec = column.spec
    fixed = spec.context(()) if spec.bind == "column" else None

    def decide(pks: Sequence[PK], values: Sequence[Any]) -> tuple[list[str], list[str | None]]:
        n = len(values)
        opened = store.keyring.opens(values, fixed) if fixed is not None else [False] * n
        if all(opened):
            return [OK] * n, [None] * n
        decided = zip(pks, values, opened, strict=True)
        categories = [OK if ok else one(pk, value)[0] for pk, value, ok in decided]
        return categories, [None] * n

    return decide


def _decider(store: Store, column: BoundColumn, legacy_keys: bool) -> Decide:
    spec = column.spec
    reader = store.legacy_reader(spec.name)
    ring = store.keyring

    def decide(pk: PK, value: Any) -> tuple[str, str | None]:
        if value is None or value == "":
            return EMPTY, None
        if not isinstance(value, str | bytes):  # bytes: a binary column's, not UTF-8
            return FAILED, None
        if type(value) is str and tokens.version_of(value) is not None:
            try:
                spec.open_token(ring.decrypt, value, pk)
            except (InvalidToken, UnknownKeyVersion):
                return FAILED, None
            return OK, None
        if reader is not None and reader.recognises(value):
            if not legacy_keys:
                return LEGACY_UNCHECKED, None
            try:
                reader.decrypt(value)
            except InvalidToken:
                return FAILED, None
            return LEGACY_OK, None
        return (UNKNOWN if looks_encrypted(value) else PLAINTEXT), None

    return decide
