"""Key lifecycle: which versions are in use, their states (draining, retired), destroying one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, literal, select, update

from keyturn._core.keyring import ACTIVE, DESTROYED, DRAINING, RETIRED
from keyturn.db import schema
from keyturn.db.columns import BoundColumn
from keyturn.db.database import utcnow
from keyturn.db.locking import KeyringLock
from keyturn.engine import backups
from keyturn.errors import KeyInUse, KeyManagementError
from keyturn.keys import keystore
from keyturn.keys.keystore import grace_ends
from keyturn.ops.status import count_column
from keyturn.store import Store


@dataclass(frozen=True)
class References:
    """How many configured values and backed-up tokens use each key version."""

    rows: dict[int, int]
    backups: dict[int, int]


def references(store: Store, conn: Connection | None = None) -> References:
    rows: Counter[int] = Counter()
    for column in store.bound_columns():
        rows.update(count_column(store, column, conn).by_version)
    if conn is None:
        with store.engine.connect() as own:
            in_backups = backups.references(own)
    else:
        in_backups = backups.references(conn)
    return References(dict(rows), dict(in_backups))


def _in_use(conn: Connection, holders: list[Any], version: int) -> bool:
    """Whether any of ``holders`` (token columns, with the conditions selecting
    their rows) has a value under ``version``.

    Stops at the first match; the database does the scanning.
    """
    for holder, rows, inside in holders:
        # A JSON document holds its tokens as strings: "kt1:3:… anywhere in it.
        prefix = f'%"kt1:{version}:%' if inside else f"kt1:{version}:%"
        hit = select(literal(1)).where(*rows, holder.like(prefix)).limit(1)
        if conn.execute(hit).first() is not None:
            return True
    return False


def refresh_states(
    store: Store,
    conn: Connection,
    *,
    write: bool = True,
    columns: Sequence[BoundColumn] | None = None,
) -> dict[int, str]:
    """Retire former versions nothing uses once their grace has passed; mark the others
    draining. Returns the states (written unless ``write`` is False). ``columns``: the
    configured columns as bound already (by a rotation), not reflected again."""
    k = schema.keys.c
    holders = [
        (column.text, column.rows, bool(column.spec.json_fields))
        for column in (store.bound_columns() if columns is None else columns)
    ]
    in_backups = backups.references(conn)  # tokens the backups keep, per version
    states: dict[int, str] = {}
    versions = [meta for meta, _ in keystore.read_versions(conn)]
    ends = grace_ends(store.config.apps.grace_seconds, versions)
    now = utcnow()
    for meta in versions:
        state = meta.state
        if state in (DRAINING, RETIRED):
            in_grace = now < ends.get(meta.version, now)
            used = in_grace or in_backups[meta.version] > 0 or _in_use(conn, holders, meta.version)
            state = DRAINING if used else RETIRED
            if state != meta.state and write:
                conn.execute(
                    update(schema.keys)
                    .where(k.version == meta.version)
                    .values(state=state, retired_at=utcnow() if state == RETIRED else None)
                )
        states[meta.version] = state
    return states


def _check_destroyable(store: Store, conn: Connection, version: int, *, write: bool) -> None:
    """KeyManagementError unless ``version`` is retired: unused, and past the grace in
    which app processes may still seal under it."""
    states = refresh_states(store, conn, write=write)
    state = states.get(version)
    if state is None:
        raise KeyManagementError(f"there is no key version {version}")
    if state == DESTROYED:
        raise KeyManagementError(f"key version {version} is already destroyed")
    if state == ACTIVE:
        raise KeyInUse(f"key version {version} is active; rotate first (`keyturn rotate`)")
    if state != DRAINING:
        return
    versions = [meta for meta, _ in keystore.read_versions(conn)]
    ends = grace_ends(store.config.apps.grace_seconds, versions)
    if utcnow() < ends[version]:
        apps = store.config.apps
        raise KeyInUse(
            f"key version {version} may still be sealed under by app processes that have not "
            f"yet seen the new version (refresh {apps.refresh_seconds:g} s + write margin "
            f"{apps.write_margin_seconds:g} s, [apps] in keyturn.toml); destroy-key is allowed "
            f"from {ends[version]:%Y-%m-%d %H:%M:%S}Z. Nothing was destroyed."
        )
    refs = references(store, conn)
    jobs = backups.jobs_by_version(conn).get(version, [])
    hint = f"; prune their backups with `keyturn prune {jobs[0]}`" if jobs else ""
    raise KeyInUse(
        f"key version {version} is still used by {refs.rows.get(version, 0)} value(s) "
        f"and {refs.backups.get(version, 0)} backed-up token(s){hint}; run "
        "`keyturn rotate` to move values off it. Nothing was destroyed."
    )


def destroy_key(store: Store, version: int, actor: str = "library", *, wait: float = 0.0) -> None:
    """Erase a retired DEK's wrapped bytes; refuse while any row or backup uses it, or
    while app processes may still seal under it (the ``[apps]`` grace).

    Checked before taking the keyring lock (a refusal writes nothing) and again
    under it, with a last scan of every column, in the transaction that
    destroys; audited in that transaction too."""
    with store.engine.connect() as conn:
        _check_destroyable(store, conn, version, write=False)
    with KeyringLock(store.engine, "destroy-key").acquire(wait), store.audit.transaction() as conn:
        keystore.lock_keyring(conn)
        _check_destroyable(store, conn, version, write=True)
        k = schema.keys.c
        conn.execute(
            update(schema.keys)
            .where(k.version == version, k.state == RETIRED)
            .values(state=DESTROYED, wrapped_dek=None)
        )
        store.audit.append(conn, actor, "destroy-key", {"version": version})
    store.reload()
