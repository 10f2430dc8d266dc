"""keyturn's own schema, versioned: ordered migrations, and the version a database has.

The version lives in ``keyturn_meta`` (``schema_version``). ``init`` and the
first operation that writes bring a database up to :data:`SCHEMA_VERSION`; a
database without the row (written before schemas were versioned) counts as 0,
and every migration is idempotent so it can be applied to one. A keyturn that
finds a newer schema than it knows refuses it (:func:`check`): it would not
know what the newer tables mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, column, inspect, select, table, update
from sqlalchemy.exc import IntegrityError

from keyturn._core import packs
from keyturn.db import schema
from keyturn.db.database import fetch_raw, has_table, stream_raw
from keyturn.errors import SchemaError

VERSION_ROW = "schema_version"


@dataclass(frozen=True)
class Migration:
    """One step of keyturn's schema; ``apply`` must be idempotent."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_tables(conn: Connection) -> None:
    schema.metadata.create_all(conn)


def _api_token_macs(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns(schema.api_tokens.name)}
    if "mac" not in columns:  # records without a MAC are refused until re-created
        table = conn.dialect.identifier_preparer.format_table(schema.api_tokens)
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN mac VARCHAR(64)")


# keyturn_backup, before migration 3: one row per value a job replaced.
_UNPACKED = table(
    "keyturn_backup",
    column("id"), column("job_id"), column("table_name"), column("column_name"),
    column("pk"), column("old_token"), column("new_token"),
)  # fmt: skip
_PACK_ROWS = 20_000


def unpacked_backups(conn: Connection) -> Iterator[tuple[str, str]]:
    """(job, value replaced) of each backup row an older keyturn kept one per value,
    while migration 3 has not packed them yet."""
    if inspect(conn).has_table(_UNPACKED.name):
        b = _UNPACKED.c
        yield from stream_raw(conn, select(b.job_id, b.old_token))


def _pack_backups(conn: Connection) -> None:
    schema.backup_batches.create(conn, checkfirst=True)
    if not inspect(conn).has_table(_UNPACKED.name):
        return
    b = _UNPACKED.c
    groups = conn.execute(select(b.job_id, b.table_name, b.column_name).distinct()).all()
    for job, table_, column_ in groups:
        after = None
        while True:  # a page at a time: an old backup table may be big
            query = select(b.id, b.pk, b.old_token, b.new_token).where(
                b.job_id == job, b.table_name == table_, b.column_name == column_
            )
            if after is not None:
                query = query.where(b.id > after)
            part = fetch_raw(conn, query.order_by(b.id).limit(_PACK_ROWS))
            if not part:
                break
            after = part[-1][0]
            pks = [_old_pk(r[1]) for r in part]
            data, used = packs.pack(pks, [r[2] for r in part], [r[3] for r in part])
            conn.execute(
                schema.backup_batches.insert().values(
                    job_id=job, table_name=table_, column_name=column_,
                    value_count=len(part), versions=packs.versions_text(used), data=data,
                )
            )  # fmt: skip
    conn.exec_driver_sql("DROP TABLE " + conn.dialect.identifier_preparer.quote(_UNPACKED.name))


def _old_pk(text: Any) -> list[Any]:
    """A keyturn_backup row's primary key (a JSON list); [] if it is not one, which
    the pack keeps as unreadable (restore skips it as corrupt)."""
    try:
        key = json.loads(text)
    except (TypeError, ValueError):
        return []
    return key if isinstance(key, list) and key else []


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keyturn's tables (keys, meta, jobs, chunks, backup, audit, tokens, lock)",
              _create_tables),
    Migration(2, "keyturn_api_tokens.mac: a MAC over each admin API token's record",
              _api_token_macs),
    Migration(3, "keyturn_backup_batches: backups packed one row per batch and column; the "
              "rows of keyturn_backup moved into it", _pack_backups),
)  # fmt: skip
SCHEMA_VERSION = MIGRATIONS[-1].version


def current(conn: Connection) -> int:
    """The database's schema version: 0 if it predates versioning or has no tables."""
    if not has_table(conn, schema.meta.name):
        return 0
    row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.name == VERSION_ROW)).first()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise SchemaError(
            f"keyturn_meta.{VERSION_ROW} is {row[0]!r}, not a version number; was it edited?"
        ) from None


def check(conn: Connection) -> int:
    """The schema version, refused if it is newer than this keyturn knows."""
    found = current(conn)
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"this database's keyturn schema is version {found}, newer than this keyturn "
            f"understands (version {SCHEMA_VERSION}): upgrade keyturn (pip install -U keyturn) "
            "on every host that runs it"
        )
    return found


def pending(conn: Connection) -> list[Migration]:
    """The migrations this database still needs (after :func:`check`)."""
    found = check(conn)
    return [m for m in MIGRATIONS if m.version > found]


def upgrade(conn: Connection) -> list[int]:
    """Apply the pending migrations in the caller's transaction; the versions applied.

    Callers hold the keyring lock or run where a second upgrade at the same
    moment is harmless (every step is idempotent; the version row is the last write).
    """
    steps = pending(conn)
    for step in steps:
        step.apply(conn)
    if steps:
        _record(conn, steps[-1].version)
    return [s.version for s in steps]


def _record(conn: Connection, version: int) -> None:
    meta = schema.meta
    done = conn.execute(update(meta).where(meta.c.name == VERSION_ROW).values(value=str(version)))
    if done.rowcount == 0:
        try:
            with conn.begin_nested():
                conn.execute(meta.insert().values(name=VERSION_ROW, value=str(version)))
        except IntegrityError:  # a concurrent upgrade recorded it first
            pass
