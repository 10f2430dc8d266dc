"""Backups taken before a rotation writes: a SQLite file copy, and old tokens per row.

``keyturn_backup`` keeps, for each row a job changed, the token it replaced and
the token it wrote (ciphertext only, never plaintext). ``restore`` swaps them
back by compare-and-swap, so a value the app wrote after the job is kept.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Text, bindparam, delete, or_, select, update
from sqlalchemy.engine import make_url

from keyturn.db import schema
from keyturn.db.columns import BoundColumn, from_stored, stored_as
from keyturn.db.database import DriverStatement, exact_equals, write_transaction
from keyturn.engine.walk import Swap

_JOB_ID = re.compile(r"[0-9a-f]{12}")
_FILE_STAMP = re.compile(r"\d{8}T\d{6}Z")


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def sqlite_file_copy(url: str, job_id: str) -> Path | None:
    """A consistent copy of a SQLite database (SQLite's backup API), mode 0600.

    Named ``<db>.keyturn-<job>-<UTC stamp>.bak`` beside the database: that name,
    not any path stored in the database, is how prune finds it again.
    """
    source = _sqlite_path(url)
    if source is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = source.with_name(f"{source.name}.keyturn-{job_id}-{stamp}.bak")
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def file_copies(url: str, job_id: str) -> list[Path]:
    """The database file copies keyturn made for ``job_id``, found by their names
    beside the database: regular files only, never a link."""
    source = _sqlite_path(url)
    if source is None or not _JOB_ID.fullmatch(job_id):
        return []
    prefix = f"{source.name}.keyturn-{job_id}-"
    found = []
    for path in source.parent.glob(glob.escape(prefix) + "*.bak"):
        stamp = path.name[len(prefix) : -len(".bak")]
        if _FILE_STAMP.fullmatch(stamp) and path.is_file() and not path.is_symlink():
            found.append(path)
    return sorted(found)


def record(conn: Connection, job_id: str, applied: Sequence[Swap]) -> None:
    """Keep the old and new token of each applied swap, in the batch's transaction."""
    if not applied:
        return
    insert = schema.backup.insert().values({name: bindparam(name) for name in _RECORD})
    keys: dict[tuple[Any, ...], str] = {}  # a row's key is spelled once for all its columns
    rows = []
    for column, pk, old, new in applied:
        key = keys.get(pk)
        if key is None:
            key = keys[pk] = _pk_json(list(pk))
        if column.binary:  # a binary column's tokens, kept as the text they are
            old, new = from_stored(old), from_stored(new)
        rows.append((job_id, column.spec.table, column.spec.column, key, old, new))
    DriverStatement(insert, conn.dialect, list(_RECORD)).executemany(conn, rows)


# One encoder for every key (json.dumps with an argument builds a new one per call).
_pk_json = json.JSONEncoder(default=str).encode
_RECORD = ("job_id", "table_name", "column_name", "pk", "old_token", "new_token")


def jobs_referencing(conn: Connection, version: int) -> list[str]:
    b = schema.backup.c
    rows = conn.execute(
        select(b.job_id)
        .where(or_(b.old_token.like(f"kt1:{version}:%"), b.old_token.like(f'%"kt1:{version}:%')))
        .distinct()
    ).all()
    return [r[0] for r in rows]


def restore(engine: Engine, job_id: str, columns: Sequence[BoundColumn]) -> dict[str, int]:
    """Put back the tokens a job replaced where the row still holds what the job wrote."""
    by_name = {c.spec.name: c for c in columns}
    b = schema.backup.c
    counts: Counter[str] = Counter()
    with write_transaction(engine) as conn:
        rows = conn.execute(
            select(b.table_name, b.column_name, b.pk, b.old_token, b.new_token)
            .where(b.job_id == job_id)
            .order_by(b.id)
        ).all()
        groups: dict[str, list[dict[str, Any]]] = {}
        for table, column, pk, old, new in rows:
            key = _stored_pk(pk)
            if key is None:  # a row edited by hand: reported, never guessed at
                counts["skipped_corrupt"] += 1
                continue
            groups.setdefault(f"{table}.{column}", []).append(
                {**{f"_pk{i}": v for i, v in enumerate(key)}, "_old": old, "_new": new}
            )
        for name, params in groups.items():
            col = by_name.get(name)
            if col is None:
                counts["skipped_unconfigured"] += len(params)
                continue
            if col.binary:
                for p in params:
                    p["_old"] = p["_old"].encode()
            old = bindparam("_old", type_=col.value.type if col.binary else Text)
            same_row = [c == bindparam(f"_pk{i}") for i, c in enumerate(col.pk)]
            swap = (
                update(col.table)
                .where(
                    *same_row,
                    *col.rows,
                    exact_equals(col.text, bindparam("_new", type_=Text), conn.dialect),
                )
                .values({col.value.name: stored_as(col.value, old, conn.dialect)})
            )
            for p in params:  # one by one: each swap's own rowcount is needed
                if conn.execute(swap, p).rowcount == 1:
                    counts["restored"] += 1
                else:
                    counts["changed_since"] += 1
    return {
        "restored": counts["restored"],
        "changed_since": counts["changed_since"],
        "skipped_unconfigured": counts["skipped_unconfigured"],
        "skipped_corrupt": counts["skipped_corrupt"],
    }


def _stored_pk(text: Any) -> list[Any] | None:
    """A backed-up row's primary key (a JSON list), or None if it is not one."""
    try:
        key = json.loads(text)
    except (TypeError, ValueError):
        return None
    return key if isinstance(key, list) and key else None


def prune(conn: Connection, job_id: str) -> int:
    """Drop a job's backed-up tokens; return how many rows went."""
    return int(conn.execute(delete(schema.backup).where(schema.backup.c.job_id == job_id)).rowcount)
