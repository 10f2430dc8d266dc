"""Key lifecycle: which versions are in use, retiring, destroying, and rotating the KEK."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect, literal, select, update

from keyturn._core.kek import KEK, ManagedKEK
from keyturn._core.keyring import ACTIVE, DESTROYED, DRAINING, RETIRED, wrap_aad
from keyturn.db import schema
from keyturn.db.database import utcnow, write_transaction
from keyturn.db.locking import KeyringLock
from keyturn.engine import backups, jobs
from keyturn.errors import ConfigError, KeyInUse, KeyManagementError, OperationFailed
from keyturn.kek.local import key_file as key_file_of
from keyturn.kek.local import pending_path
from keyturn.keyfiles import write_key_file
from keyturn.keys import keystore
from keyturn.keys import wrapped as wrapped_secrets
from keyturn.keys.keystore import grace_ends
from keyturn.ops.status import backup_references, count_column
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
            in_backups = backup_references(own)
    else:
        in_backups = backup_references(conn)
    return References(dict(rows), dict(in_backups))


def _in_use(conn: Connection, holders: list[Any], version: int) -> bool:
    """Whether any of ``holders`` (token columns) has a value under ``version``.

    Stops at the first match; the database does the scanning.
    """
    prefix = f"kt1:{version}:%"
    for holder in holders:
        hit = select(literal(1)).where(holder.like(prefix)).limit(1)
        if conn.execute(hit).first() is not None:
            return True
    return False


def refresh_states(store: Store, conn: Connection, *, write: bool = True) -> dict[int, str]:
    """Retire former versions nothing uses once their grace has passed; mark the others
    draining. Returns the states (written unless ``write`` is False)."""
    k = schema.keys.c
    holders = [column.value for column in store.bound_columns()]
    if inspect(conn).has_table(schema.backup.name):
        holders.append(schema.backup.c.old_token)
    states: dict[int, str] = {}
    versions = [meta for meta, _ in keystore.read_versions(conn)]
    ends = grace_ends(store.config.apps.grace_seconds, versions)
    now = utcnow()
    for meta in versions:
        state = meta.state
        if state in (DRAINING, RETIRED):
            in_grace = now < ends.get(meta.version, now)
            used = in_grace or _in_use(conn, holders, meta.version)
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
    jobs = backups.jobs_referencing(conn, version)
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


@dataclass(frozen=True)
class KekRotation:
    """What ``rotate-kek`` did."""

    versions: int
    old_kek_id: str
    new_kek_id: str
    milliseconds: float
    key_file: str | None
    kms_key_version: int | None = None
    kms_min_decryption_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "rewrapped_versions": self.versions,
            "old_kek_id": self.old_kek_id,
            "new_kek_id": self.new_kek_id,
            "milliseconds": self.milliseconds,
            "key_file_replaced": self.key_file,
        }
        if self.kms_key_version is not None:
            data["kms_key_version"] = self.kms_key_version
            data["kms_min_decryption_version"] = self.kms_min_decryption_version
        return data


def rotate_kek(
    store: Store,
    new: KEK | None = None,
    *,
    replace_key_file: bool = True,
    retire_old_versions: bool = False,
    wait: float = 0.0,
    before_write: Callable[[], None] | None = None,
) -> KekRotation:
    """Rewrap every DEK (and every other KEK-wrapped secret) under a new KEK in one
    transaction; cost independent of row count.

    A KEK its KMS manages (Transit) takes no ``new``: it is rotated inside the
    KMS (see :func:`_rotate_managed_locked`). A local KEK is replaced by ``new``.
    Holds the keyring lock, so no rotation mints under the old KEK meanwhile.
    If the current KEK lives in a key file, the new key is staged beside it
    before the commit and moved over it after: killed at any instant, either
    the old file opens the old keyring, or the staged file opens the new one
    (and the store finishes the move when it next opens).
    """
    if isinstance(store.kek, ManagedKEK):
        if new is not None:
            raise ConfigError(
                f"the KEK is a KMS key ({store.kek.kek_id}): rotate-kek rotates it inside the "
                "KMS and takes no new key"
            )
        with KeyringLock(store.engine, "rotate-kek").acquire(wait):
            if before_write is not None:
                before_write()
            return _rotate_managed_locked(store, store.kek, retire_old_versions)
    if retire_old_versions:
        raise ConfigError("retiring KMS key versions applies only to a KMS-managed KEK")
    if new is None:
        raise ConfigError("rotate-kek needs the new KEK (from an env var or a key file)")
    with KeyringLock(store.engine, "rotate-kek").acquire(wait):
        store.reload()  # under the lock: the KEK that wraps the keyring now
        if before_write is not None and new.kek_id != store.kek.kek_id:
            before_write()
        return _rotate_kek_locked(store, new, replace_key_file)


def _rotate_kek_locked(store: Store, new: KEK, replace_key_file: bool) -> KekRotation:
    old = store.kek
    if new.kek_id == old.kek_id:
        raise KeyManagementError("the new KEK is the same as the current one; nothing to do")
    key_file = key_file_of(old)
    staged = None
    if key_file is not None and replace_key_file:
        key_text = getattr(new, "key_text", None)
        if key_text is None:
            raise OperationFailed("the new KEK cannot be written to a key file")
        staged = pending_path(key_file)
        staged.unlink(missing_ok=True)
        write_key_file(staged, key_text())
    started = time.perf_counter()
    with write_transaction(store.engine) as conn:
        keystore.check_kek(conn, old)
        kid = keystore.keyring_id(conn)
        rows = keystore.wrapped_only(keystore.read_versions(conn))
        for meta, wrapped in rows:
            aad = wrap_aad(kid, meta.version)
            dek = old.unwrap(wrapped, aad)
            keystore.swap_wrapping(conn, meta.version, wrapped, new.wrap(dek, aad), new.kek_id)
        wrapped_secrets.rewrap_all(conn, old, new, kid)
        # Check before committing that the new KEK opens everything.
        keystore.load(conn, new)
    elapsed = (time.perf_counter() - started) * 1000
    if staged is not None and key_file is not None:
        with suppress(FileNotFoundError):  # a process opening the keyring moved it already
            os.replace(staged, key_file)
        _fsync_dir(key_file.parent)
    store.kek = new
    store.reload()
    count = len(rows)
    return KekRotation(
        count, old.kek_id, new.kek_id, round(elapsed, 2), str(key_file) if staged else None
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rotate_managed_locked(store: Store, kek: ManagedKEK, retire_old_versions: bool) -> KekRotation:
    """Rotate the key inside its KMS, then rewrap every wrapped secret there: each
    one re-encrypted without its plaintext leaving the KMS. Killed at any instant,
    the old wrappings still open (older KMS versions keep decrypting) until
    ``retire_old_versions`` raises the key's minimum version, only after the commit."""
    started = time.perf_counter()
    version = kek.rotate()
    with store.engine.connect() as conn:
        rows = keystore.wrapped_only(keystore.read_versions(conn))
        secrets = wrapped_secrets.all_wrapped(conn)
    # KMS calls happen outside the transaction; the swap below notices a
    # keyring changed meanwhile (another rotate-kek) and writes nothing.
    rewrapped = [(meta, old, kek.rewrap(old)) for meta, old in rows]
    rewrapped_secrets = [(secret, old, kek.rewrap(old)) for secret, old in secrets]
    with write_transaction(store.engine) as conn:
        keystore.lock_keyring(conn)
        for secret, old_wrapping, new_wrapping in rewrapped_secrets:
            if not wrapped_secrets.swap(conn, secret, old_wrapping, new_wrapping):
                raise OperationFailed(
                    f"{secret.name} changed while rotate-kek ran; nothing was written, run it again"
                )
        for meta, old, new in rewrapped:
            if not keystore.swap_wrapping(conn, meta.version, old, new, kek.kek_id):
                raise OperationFailed(
                    f"key v{meta.version} changed while rotate-kek ran; nothing was written, "
                    "run it again"
                )
        keystore.load(conn, kek)
    elapsed = (time.perf_counter() - started) * 1000
    minimum = None
    if retire_old_versions:
        kek.set_min_decryption_version(version)
        minimum = version
    store.reload()
    return KekRotation(len(rows), kek.kek_id, kek.kek_id, round(elapsed, 2), None, version, minimum)


@dataclass(frozen=True)
class PruneResult:
    """What ``prune`` did: backed-up tokens dropped, files removed or refused, states."""

    job: str
    dropped: int
    removed_files: tuple[str, ...]
    refused_files: tuple[str, ...]
    states: dict[int, str]
    newly_retired: tuple[int, ...]


def prune_job(
    store: Store, job_id: str, actor: str = "library", *, wait: float = 0.0
) -> PruneResult:
    """Drop a job's backed-up tokens and its database file copies; retire what is unused.

    Files are found by keyturn's own naming beside the database. A path the
    job row names that is not such a file is refused and reported, never
    deleted (the database is not trusted to name files).
    """
    job = jobs.lookup(store.engine, job_id)
    with KeyringLock(store.engine, "prune", job.id).acquire(wait):
        with store.audit.transaction() as conn:
            before = {m.version: m.state for m, _ in keystore.read_versions(conn)}
            dropped = backups.prune(conn, job.id)
            states = refresh_states(store, conn)
            store.audit.append(conn, actor, "prune", {"job": job.id, "dropped": dropped})
        ours = backups.file_copies(store.config.database, job.id)
        for path in ours:
            path.unlink(missing_ok=True)
        named = job.backup_path
        refused: tuple[str, ...] = ()
        if named and not any(str(p) == named for p in ours) and os.path.lexists(named):
            refused = (named,)
    retired = tuple(v for v, st in states.items() if st == RETIRED and before.get(v) != RETIRED)
    return PruneResult(job.id, dropped, tuple(map(str, ours)), refused, states, retired)


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` did: tokens put back, and rows left as they were (and why)."""

    job: str
    restored: int
    changed_since: int
    skipped_unconfigured: int
    skipped_corrupt: int

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "job"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_job(
    store: Store,
    job_id: str,
    *,
    wait: float = 0.0,
    before_write: Callable[[], None] | None = None,
) -> RestoreResult:
    """Put back the tokens a job replaced (by compare-and-swap), under the keyring lock."""
    job = jobs.lookup(store.engine, job_id)
    with KeyringLock(store.engine, "restore", job.id).acquire(wait):
        if before_write is not None:
            before_write()
        counts = backups.restore(store.engine, job.id, store.bound_columns())
        with write_transaction(store.engine) as conn:
            jobs.finish(conn, job.id, jobs.RESTORED)
            refresh_states(store, conn)
    return RestoreResult(job.id, **counts)
