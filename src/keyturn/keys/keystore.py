"""Persisting the keyring in ``keyturn_keys``: create, load (with the drift check), add.

Every load unwraps every non-destroyed DEK, so a KEK that does not match the
keyring is found when the store opens, not at the first read of an old row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from sqlalchemy import Connection, Engine, func, select, update

from keyturn._core.kek import KEK
from keyturn._core.keyring import ACTIVE, DESTROYED, RETIRED, DataKey, Keyring, KeyVersion, wrap_aad
from keyturn.db import migrations, schema
from keyturn.db.database import (
    bound_actor,
    has_table,
    raw_columns,
    stored_datetime,
    utcnow,
    write_transaction,
)
from keyturn.db.locking import KeyringLock
from keyturn.errors import CorruptKeyring, KEKChanged, NotInitialized, WrongKEK
from keyturn.keys.audit import AuditLog


@dataclass(frozen=True)
class LoadedKeyring:
    """The unwrapped keyring with its id and the metadata of every version."""

    keyring_id: str
    keyring: Keyring
    versions: tuple[KeyVersion, ...]


def is_initialized(conn: Connection) -> bool:
    if not has_table(conn, schema.keys.name):
        return False
    return conn.execute(select(schema.keys.c.version).limit(1)).first() is not None


def keyring_id(conn: Connection) -> str:
    row = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.name == "keyring_id")
    ).first()
    if row is None:
        raise NotInitialized("this database has no keyturn keyring; run `keyturn init`")
    return str(row[0])


def initialize(
    engine: Engine, kek: KEK, created_by: str, *, wait: float = 0.0
) -> tuple[bool, LoadedKeyring]:
    """Create keyturn's tables and DEK v1; return (created, keyring). Idempotent.

    Creating holds the keyring lock, so two inits at once make one keyring.
    """
    with engine.connect() as conn:
        exists = is_initialized(conn)
    if exists:
        return _check_initialized(engine, kek)
    with KeyringLock(engine, "init").acquire(wait), write_transaction(engine) as conn:
        if is_initialized(conn):  # another init finished while we waited
            loaded = load(conn, kek)
            return False, loaded
        migrations.upgrade(conn)
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


def _check_initialized(engine: Engine, kek: KEK) -> tuple[bool, LoadedKeyring]:
    with write_transaction(engine) as conn:
        migrations.check(conn)
        loaded = load(conn, kek)  # the KEK check comes before any write
        migrations.upgrade(conn)  # tables and columns added by newer keyturn versions
        return False, loaded


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
            created_by=bound_actor(created_by),
            kek_id=kek.kek_id,
        )
    )


def grace_ends(grace_seconds: float, versions: Sequence[KeyVersion]) -> dict[int, datetime]:
    """For each former version: until when app processes may still seal under it.

    A version stops being active when the next one is minted (its
    ``created_at``); add the app contract's grace (``[apps]``).
    """
    grace = timedelta(seconds=grace_seconds)
    ordered = sorted(versions, key=lambda v: v.version)
    return {v.version: nxt.created_at + grace for v, nxt in pairwise(ordered)}


def read_versions(conn: Connection) -> list[tuple[KeyVersion, str | None]]:
    """Every version's metadata with its wrapped DEK, oldest first."""
    rows = conn.execute(select(*raw_columns(schema.keys)).order_by(schema.keys.c.version)).all()
    out = []
    for r in rows:
        created = stored_datetime(r.created_at)
        if created is None:
            raise CorruptKeyring(
                f"keyturn_keys.created_at of version {r.version} is not a date "
                f"(the row was edited); restore it from a backup"
            )
        meta = KeyVersion(
            r.version, r.state, created, stored_datetime(r.retired_at), r.created_by, r.kek_id
        )
        out.append((meta, r.wrapped_dek))
    return out


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
    if not has_table(conn, schema.keys.name):
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
                "configuration (docs/KEYS.md)"
            ) from None
    destroyed = frozenset(v.version for v, _ in rows if v.state == DESTROYED)
    return LoadedKeyring(kid, Keyring(keys, active[0], destroyed), tuple(v for v, _ in rows))


def lock_keyring(conn: Connection) -> None:
    """Serialize transactions that write wrappings: lock the keyring's meta row.

    Every transaction that wraps a key (a mint, rotate-kek, a new audit key)
    takes it first, so at each commit every wrapping opens under one KEK.
    """
    conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.name == "keyring_id").with_for_update()
    ).first()


def check_kek(conn: Connection, kek: KEK) -> None:
    """Inside a transaction that will wrap with ``kek``: KEKChanged unless ``kek``
    opens the keyring as it is now (the active version, read under a lock)."""
    k = schema.keys.c
    lock_keyring(conn)
    row = conn.execute(
        select(k.version, k.wrapped_dek).where(k.state == ACTIVE).with_for_update()
    ).first()
    if row is None or row[1] is None:
        raise CorruptKeyring("keyturn_keys has no active version with a wrapped key")
    try:
        kek.unwrap(row[1], wrap_aad(keyring_id(conn), row[0]))
    except WrongKEK:
        raise KEKChanged(
            f"the keyring is no longer wrapped by the KEK this process holds ({kek.kek_id}): "
            "rotate-kek ran meanwhile; this step was rolled back. Run the command again with "
            "the current KEK"
        ) from None


def newest_version(conn: Connection) -> int | None:
    """The highest version in the keyring (any state), read from the primary key."""
    return conn.execute(select(func.max(schema.keys.c.version))).scalar()


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
