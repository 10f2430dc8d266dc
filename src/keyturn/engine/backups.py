"""Backups taken before a rotation writes: a SQLite file copy, and the values replaced.

``keyturn_backup_batches`` keeps, for each batch and column a job changed, one
pack (keyturn._core.packs): each row's key, the value the job replaced
(ciphertext only, never plaintext) and a fingerprint of the value it wrote.
``restore`` puts a value back only where the row still holds what the job
wrote, by compare-and-swap, so a value the app wrote after the job is kept.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url

from keyturn._core import packs, tokens
from keyturn._core.jsonpath import splice
from keyturn._core.keyring import Resealed
from keyturn.db import migrations, schema
from keyturn.db.columns import BoundColumn, keys_in, read_as, stored_as
from keyturn.db.database import DriverStatement, exact_equals, has_table, write_transaction
from keyturn.engine.walk import Applied

_JOB_ID = re.compile(r"[0-9a-f]{12}")
_FILE_STAMP = re.compile(r"\d{8}T\d{6}Z")


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def sqlite_file_copy(url: str, job_id: str) -> Path | None:
    """A consistent copy of a SQLite database, mode 0600.

    Named ``<db>.keyturn-<job>-<UTC stamp>.bak`` beside the database: that name,
    not any path stored in the database, is how prune finds it again.
    """
    source = _sqlite_path(url)
    if source is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = source.with_name(f"{source.name}.keyturn-{job_id}-{stamp}.bak")
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(source, timeout=30, isolation_level=None)
    try:
        (mode,) = src.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() == "wal":  # the file alone is not the database: copy pages
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        else:
            # With a rollback journal, a read transaction's shared lock keeps every
            # writer out of the file: copied whole, it is the database (5x faster
            # than the backup API's page by page copy at 180 MiB).
            src.execute("BEGIN")
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            shutil.copyfile(source, target)
            src.execute("COMMIT")
    finally:
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


def record(conn: Connection, job_id: str, applied: Sequence[Applied]) -> None:
    """Keep what each applied swap replaced, and a fingerprint of what it wrote, in
    the batch's transaction: one packed row per column (more for huge values)."""
    rows = []
    keys: dict[int, tuple[str, bytes]] = {}  # columns swapped in the same rows share them
    for column, pks, olds, news in applied:
        if not pks:
            continue
        for lo, hi in _slices(olds):
            if (lo, hi) == (0, len(pks)):
                found = keys.get(id(pks))
                if found is None:
                    found = keys[id(pks)] = packs.pack_keys(pks)
                opened = None
                if isinstance(news, Resealed) and news.version and len(news.opened) == hi:
                    opened = news.version, news.opened  # every old token, decoded
                data, used = packs.pack(pks, olds, news, found, opened)
            else:
                data, used = packs.pack(pks[lo:hi], olds[lo:hi], news[lo:hi])
            spec = column.spec  # a JSON column's field is kept as its own column: doc$.apiKey
            name = spec.column + spec.path
            rows.append((job_id, spec.table, name, hi - lo, packs.versions_text(used), data))
    if rows:
        b = schema.backup_batches
        insert = b.insert().values({name: bindparam(name) for name in _RECORD})
        DriverStatement(insert, conn.dialect, list(_RECORD)).executemany(conn, rows)


_RECORD = ("job_id", "table_name", "column_name", "value_count", "versions", "data")
#: At most this many bytes of replaced values per pack: under MariaDB's 16 MiB
#: packet with room to spare, and a restore's memory bounded by it.
PACK_BYTES = 4 << 20


def _slices(olds: Sequence[Any]) -> list[tuple[int, int]]:
    """Index ranges of ``olds`` of at most PACK_BYTES each (one range, usually)."""
    sizes = list(map(len, olds))
    if sum(sizes) <= PACK_BYTES:
        return [(0, len(olds))]
    out, lo, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total and total + size > PACK_BYTES:
            out.append((lo, i))
            lo, total = i, 0
        total += size
    out.append((lo, len(olds)))
    return out


def versions_by_job(conn: Connection) -> dict[str, Counter[int]]:
    """Per job, how many of the tokens its backups keep use each key version
    (tokens inside backed-up JSON documents included)."""
    out: dict[str, Counter[int]] = {}
    if has_table(conn, schema.backup_batches.name):
        b = schema.backup_batches.c
        for job_id, versions in conn.execute(select(b.job_id, b.versions)):
            counts = out.setdefault(job_id, Counter())
            for version, n in _versions(versions).items():
                counts[version] += n
    for job_id, old in migrations.unpacked_backups(conn):  # not yet migrated
        out.setdefault(job_id, Counter()).update(packs.versions_used([old]))
    return out


def _versions(text: Any) -> Counter[int]:
    """A pack's ``versions`` column; empty if it was edited into something else."""
    try:
        found = json.loads(text)
        return Counter({int(v): int(n) for v, n in found.items()})
    except (TypeError, ValueError, AttributeError):
        return Counter()


def references(conn: Connection) -> Counter[int]:
    """How many backed-up tokens use each key version, over every job."""
    total: Counter[int] = Counter()
    for counts in versions_by_job(conn).values():
        total.update(counts)
    return total


def jobs_by_version(conn: Connection) -> dict[int, list[str]]:
    """Per key version, the jobs whose backups keep a token of it (sorted)."""
    out: dict[int, list[str]] = {}
    for job, counts in sorted(versions_by_job(conn).items()):
        for version, n in counts.items():
            if n:
                out.setdefault(version, []).append(job)
    return out


def entries(
    conn: Connection, job_id: str | None = None
) -> Iterator[tuple[str, str, list[Any] | None, Any]]:
    """(table, column, primary key or None if unreadable, value replaced) of each
    value a job's backups (or every job's) keep, in the order they were kept;
    CorruptPack if a pack does not parse."""
    for table, column, _, data in _packs(conn, job_id):
        found = packs.unpack(data)
        for pk, old in zip(found.pks, found.olds, strict=True):
            yield table, column, pk, old


def _packs(conn: Connection, job_id: str | None) -> Iterator[tuple[str, str, int, bytes]]:
    """(table, column, values, data) of a job's (or every job's) packs, read one at a
    time: each is up to a few MiB, a job's all of them as big as its tokens."""
    b = schema.backup_batches.c
    query = select(b.id).order_by(b.id)
    if job_id is not None:
        query = query.where(b.job_id == job_id)
    ids = conn.execute(query).scalars().all()
    for pack_id in ids:
        row = conn.execute(
            select(b.table_name, b.column_name, b.value_count, b.data).where(b.id == pack_id)
        ).one()
        yield row[0], row[1], int(row[2]), bytes(row[3])


def restore(engine: Engine, job_id: str, columns: Sequence[BoundColumn]) -> dict[str, int]:
    """Put back the values a job replaced where the row still holds what the job
    wrote (its fingerprint matches), by compare-and-swap on the value read."""
    by_name = {c.spec.name: c for c in columns}
    fields = {c.spec.name + p.text: c for c in columns for p in c.spec.json_fields}
    counts: Counter[str] = Counter()
    with write_transaction(engine) as conn:
        migrations.upgrade(conn)  # backups kept by an older keyturn are packed first
        for table, column, n, data in _packs(conn, job_id):
            field = fields.get(f"{table}.{column}")
            col = by_name.get(f"{table}.{column}") or field
            if col is None:
                counts["skipped_unconfigured"] += n
                continue
            try:
                found = packs.unpack(data)
            except packs.CorruptPack:
                counts["skipped_corrupt"] += n
                continue
            if field is not None:
                _restore_fields(conn, col, found, counts)
            else:
                _restore_pack(conn, col, found, counts)
    return {
        "restored": counts["restored"],
        "changed_since": counts["changed_since"],
        "skipped_unconfigured": counts["skipped_unconfigured"],
        "skipped_corrupt": counts["skipped_corrupt"],
    }


def _swap(conn: Connection, col: BoundColumn) -> Any:
    """UPDATE the row ``_pk0…`` to ``_old`` where it still holds ``_now``."""
    value = read_as(col.value)
    # Bound as what it is (a JSON column's type would encode the text as a JSON string).
    old = bindparam("_old", type_=col.value.type if col.binary else Text)
    return (
        update(col.table)
        .where(
            *[c == bindparam(f"_pk{i}") for i, c in enumerate(col.pk)],
            *col.rows,
            exact_equals(value, bindparam("_now", type_=value.type), conn.dialect),
        )
        .values({col.value.name: stored_as(col.value, old, conn.dialect)})
    )


def _restore_fields(
    conn: Connection, col: BoundColumn, found: packs.Pack, counts: Counter[str]
) -> None:
    """A JSON column's field pack: in each document that still holds the token the job
    wrote (found by its fingerprint), that token is replaced by the one it
    replaced; the rest of the document stays as the app left it."""
    value, swap, width = read_as(col.value), _swap(conn, col), len(col.pk)
    rows = list(zip(found.pks, found.olds, found.fingerprints, strict=True))
    for start in range(0, len(rows), _READ_ROWS):
        part = rows[start : start + _READ_ROWS]
        keys = [pk for pk, _, _ in part if pk is not None and len(pk) == width]
        current = _current(conn, col, value, keys)
        edited: dict[tuple[str, ...], list[Any]] = {}  # key -> [pk, read, now, fields]
        for pk, was, print_ in part:
            if pk is None or len(pk) != width:
                counts["skipped_corrupt"] += 1
                continue
            key = _key(pk)
            entry = edited.get(key)
            if entry is None:
                read = current.get(key, _MISSING)
                if isinstance(read, bytes | bytearray):
                    read = bytes(read).decode("utf-8", "replace")
                entry = [pk, read, read, 0]
            document = _put_back(entry[2], was, print_) if isinstance(entry[2], str) else None
            if document is None:
                counts["changed_since"] += 1  # the app wrote the field since, or deleted it
                continue
            entry[2], entry[3] = document, entry[3] + 1
            edited[key] = entry
        entries = list(edited.values())
        swaps = [_swap_params(pk, read, document) for pk, read, document, _ in entries]
        _run_swaps(conn, col, swap, swaps, [n for *_, n in entries], counts)


def _put_back(document: str, was: str, print_: str) -> str | None:
    """``document`` with the token whose fingerprint is ``print_`` replaced by
    ``was``; None unless exactly one token there has it."""
    tail = print_ + '"'
    end = document.find(tail)
    if end < 0 or document.find(tail, end + 1) >= 0:
        return None
    end += len(print_)
    start = document.rfind('"', 0, end) + 1
    token = document[start:end]
    if tokens.version_of(token) is None or packs.fingerprint(token) != print_:
        return None
    return splice(document, [(start - 1, end + 1, was)])


def _restore_pack(
    conn: Connection, col: BoundColumn, found: packs.Pack, counts: Counter[str]
) -> None:
    value, swap = read_as(col.value), _swap(conn, col)
    rows = list(zip(found.pks, found.olds, found.fingerprints, strict=True))
    width = len(col.pk)
    for start in range(0, len(rows), _READ_ROWS):
        part = rows[start : start + _READ_ROWS]
        keys = [pk for pk, _, _ in part if pk is not None and len(pk) == width]
        current = _current(conn, col, value, keys)
        swaps = []
        for pk, was, print_ in part:
            if pk is None or len(pk) != width:
                counts["skipped_corrupt"] += 1
                continue
            now = current.get(_key(pk), _MISSING)
            if now is _MISSING or packs.fingerprint(now) != print_:
                counts["changed_since"] += 1  # the app wrote it since, or deleted it
                continue
            if col.binary and isinstance(was, str):
                was = was.encode()
            swaps.append(_swap_params(pk, now, was))
        _run_swaps(conn, col, swap, swaps, [1] * len(swaps), counts)


def _swap_params(pk: Sequence[Any], now: Any, old: Any) -> dict[str, Any]:
    """The parameters of :func:`_swap` for one row."""
    return {**{f"_pk{i}": v for i, v in enumerate(pk)}, "_now": now, "_old": old}


def _run_swaps(
    conn: Connection,
    col: BoundColumn,
    swap: Any,
    swaps: list[dict[str, Any]],
    values: list[int],
    counts: Counter[str],
) -> None:
    """Run the swaps, each putting back ``values[k]`` values (a document's fields),
    and count them restored or ``changed_since``."""
    if swaps and conn.dialect.supports_sane_multi_rowcount and not col.rows and set(values) == {1}:
        # A swap misses only if the app wrote the row since it was read: the
        # total says how many applied, which is all the counts need. (A ``where``
        # filter's IN list cannot go to executemany: such rows go one by one; so
        # do swaps standing for more than one value, each counted by its own.)
        applied = conn.execute(swap, swaps).rowcount
        counts["restored"] += applied
        counts["changed_since"] += len(swaps) - applied
        return
    for params, n in zip(swaps, values, strict=True):  # one by one: each swap's own rowcount
        done = conn.execute(swap, params).rowcount == 1
        counts["restored" if done else "changed_since"] += n


_READ_ROWS = 500
_MISSING = object()


def _key(pk: Sequence[Any]) -> tuple[str, ...]:
    """A primary key as text, the same whether read from the table (a UUID, a date)
    or from a pack (which keeps such values as their text)."""
    return tuple(map(str, pk))


def _current(
    conn: Connection, col: BoundColumn, value: Any, keys: list[list[Any]]
) -> dict[tuple[str, ...], Any]:
    """The values the rows ``keys`` hold now, by :func:`_key`."""
    if not keys:
        return {}
    query = select(*col.pk, value).where(keys_in(col.pk, keys), *col.rows)
    return {_key(row[:-1]): row[-1] for row in conn.execute(query)}


def prune(conn: Connection, job_id: str) -> int:
    """Drop a job's backed-up values; return how many went."""
    migrations.upgrade(conn)
    b = schema.backup_batches
    gone = conn.execute(select(func.sum(b.c.value_count)).where(b.c.job_id == job_id)).scalar()
    conn.execute(delete(b).where(b.c.job_id == job_id))
    return int(gone or 0)
