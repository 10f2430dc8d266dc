"""``keyturn rotate-kek``: every DEK and every other KEK-wrapped secret rewrapped under a
new KEK in one transaction, or, for a KEK its KMS manages, rotated inside the KMS."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyturn._core.kek import KEK, ManagedKEK
from keyturn._core.keyring import wrap_aad
from keyturn.db.database import write_transaction
from keyturn.db.locking import KeyringLock
from keyturn.errors import ConfigError, KeyManagementError, OperationFailed
from keyturn.kek.local import key_file as key_file_of
from keyturn.kek.local import pending_path
from keyturn.keyfiles import write_key_file
from keyturn.keys import keystore
from keyturn.keys import wrapped as wrapped_secrets
from keyturn.store import Store


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
