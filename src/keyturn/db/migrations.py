"""keyturn's own schema, versioned: ordered migrations, and the version a database has.

The version lives in ``keyturn_meta`` (``schema_version``). ``init`` and the
first operation that writes bring a database up to :data:`SCHEMA_VERSION`; a
database without the row (written before schemas were versioned) counts as 0,
and every migration is idempotent so it can be applied to one. A keyturn that
finds a newer schema than it knows refuses it (:func:`check`): it would not
know what the newer tables mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, inspect, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.db import schema
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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keyturn's tables (keys, meta, jobs, chunks, backup, audit, tokens, lock)",
              _create_tables),
    Migration(2, "keyturn_api_tokens.mac: a MAC over each admin API token's record",
              _api_token_macs),
)  # fmt: skip
SCHEMA_VERSION = MIGRATIONS[-1].version


def current(conn: Connection) -> int:
    """The database's schema version: 0 if it predates versioning or has no tables."""
    if not inspect(conn).has_table(schema.meta.name):
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
