"""Persisting the keyring in ``keyturn_keys``: create, load (with the drift check), add.

Every load unwraps every non-destroyed DEK, so a KEK that does not match the
keyring is found when the store opens, not at the first read of an old row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, select, update

from . import schema
from .audit import AuditLog
from .database import write_transaction
from .errors import KeyturnError, NotInitialized, WrongKEK
from .kek import KEK
from .keyring import ACTIVE, DESTROYED, RETIRED, DataKey, Keyring, KeyVersion, wrap_aad


class CorruptKeyring(KeyturnError):
    """``keyturn_keys`` breaks an invariant (e.g. no or several active versions)."""

    exit_code = 3


@dataclass(frozen=True)
class LoadedKeyring:
    """The unwrapped keyring with its id and the metadata of every version."""

    keyring_id: str
    keyring: Keyring
    versions: tuple[KeyVersion, ...]


def utcnow() -> datetime:
    """Naive UTC, as stored in DateTime columns on every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


def is_initialized(conn: Connection) -> bool:
    if not inspect(conn).has_table(schema.keys.name):
        return False
    return conn.execute(select(schema.keys.c.version).limit(1)).first() is not None


def keyring_id(conn: Connection) -> str:
    row = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.name == "keyring_id")
    ).first()
    if row is None:
        raise NotInitialized("this database has no keyturn keyring; run `keyturn init`")
    return str(row[0])


def initialize(engine: Engine, kek: KEK, created_by: str) -> tuple[bool, LoadedKeyring]:
    """Create keyturn's tables and DEK v1; return (created, keyring). Idempotent."""
    with write_transaction(engine) as conn:
        if is_initialized(conn):
            loaded = load(conn, kek)  # the KEK check comes before any write
            schema.metadata.create_all(conn)  # tables added by newer keyturn versions
            return False, loaded
        schema.metadata.create_all(conn)
        kid = uuid.uuid4().hex
        conn.execute(
            schema.meta.insert(),
            [{"name": "keyring_id", "value": kid}, {"name": "format", "value": "kt1"}],
        )
        insert_version(conn, kek, kid, DataKey.generate(1), ACTIVE, created_by)
        loaded = load(conn, kek)
        log = AuditLog(engine, kek, kid)
        log.create_key(conn)
        log.append(conn, created_by, "init", {"active_version": 1, "kek_id": kek.kek_id})
        return True, loaded


def insert_version(
    conn: Connection, kek: KEK, kid: str, dek: DataKey, state: str, created_by: str
) -> None:
    conn.execute(
        schema.keys.insert().values(
            version=dek.version,
            wrapped_dek=kek.wrap(dek.key, wrap_aad(kid, dek.version)),
            state=state,
            created_at=utcnow(),
            retired_at=None,
            created_by=created_by,
            kek_id=kek.kek_id,
        )
    )


def read_versions(conn: Connection) -> list[tuple[KeyVersion, str | None]]:
    """Every version's metadata with its wrapped DEK, oldest first."""
    k = schema.keys.c
    rows = conn.execute(
        select(
            k.version, k.state, k.created_at, k.retired_at, k.created_by, k.kek_id, k.wrapped_dek
        ).order_by(k.version)
    ).all()
    return [(KeyVersion(r[0], r[1], r[2], r[3], r[4], r[5]), r[6]) for r in rows]


def wrapped_only(
    rows: list[tuple[KeyVersion, str | None]],
) -> list[tuple[KeyVersion, str]]:
    """Of ``read_versions`` rows, those still holding a wrapped DEK (not destroyed)."""
    return [(m, w) for m, w in rows if w is not None and m.state != DESTROYED]


def swap_wrapping(conn: Connection, version: int, old: str, new: str, kek_id: str) -> bool:
    """Replace a version's wrapped DEK if it is still ``old``; False if it changed."""
    k = schema.keys.c
    result = conn.execute(
        update(schema.keys)
        .where(k.version == version, k.wrapped_dek == old)
        .values(wrapped_dek=new, kek_id=kek_id)
    )
    return bool(result.rowcount == 1)


def load(conn: Connection, kek: KEK) -> LoadedKeyring:
    """Unwrap every non-destroyed DEK; WrongKEK if the KEK opens any of them not."""
    if not inspect(conn).has_table(schema.keys.name):
        raise NotInitialized("this database has no keyturn keyring; run `keyturn init`")
    kid = keyring_id(conn)
    rows = read_versions(conn)
    active = [v.version for v, _ in rows if v.state == ACTIVE]
    if len(active) != 1:
        raise CorruptKeyring(
            f"keyturn_keys has {len(active)} active versions; exactly one is required"
        )
    keys: dict[int, DataKey] = {}
    for meta, wrapped in wrapped_only(rows):
        try:
            keys[meta.version] = DataKey(
                meta.version, kek.unwrap(wrapped, wrap_aad(kid, meta.version))
            )
        except WrongKEK:
            raise WrongKEK(
                f"the KEK from {kek.source} (id {kek.kek_id}) does not open key version "
                f"{meta.version}, which was wrapped by KEK {meta.kek_id}; check the KEK "
                "configuration (docs/KEYS.md). Nothing was written."
            ) from None
    destroyed = frozenset(v.version for v, _ in rows if v.state == DESTROYED)
    return LoadedKeyring(kid, Keyring(keys, active[0], destroyed), tuple(v for v, _ in rows))


def active_version(conn: Connection) -> int | None:
    """The active version, read cheaply for the store's refresh check."""
    k = schema.keys.c
    return conn.execute(select(k.version).where(k.state == ACTIVE)).scalar()


def retire(conn: Connection, version: int) -> None:
    k = schema.keys.c
    conn.execute(
        update(schema.keys)
        .where(k.version == version, k.state != DESTROYED)
        .values(state=RETIRED, retired_at=utcnow())
    )
