"""The library API: a Store encrypts and decrypts with the database's keyring.

A Store caches the unwrapped DEKs. It reloads the keyring when a token names a
version newer than any it holds (another process rotated) and re-reads the
active version at least every ``refresh_seconds`` before it seals, so
application processes follow a rotation without restarting. That interval is
part of the app contract (``[apps]`` in keyturn.toml, docs/ROTATION.md):
keyturn retires and destroys a version only after every Store must have
stopped sealing under it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, overload

from sqlalchemy import Connection, Engine

from keyturn._core.context import column_of
from keyturn._core.kek import KEK
from keyturn._core.keyring import Keyring, KeyVersion
from keyturn._core.tokens import header
from keyturn.config import Config, load_config
from keyturn.db import migrations
from keyturn.db.columns import BoundColumn, bind_columns, from_stored
from keyturn.db.database import connect
from keyturn.errors import (
    ConfigError,
    CorruptKeyring,
    InvalidToken,
    KEKChanged,
    KeyManagementError,
    KeyturnError,
    NotInitialized,
    OperationFailed,
    UnknownKeyVersion,
    WrongKEK,
)
from keyturn.kek import resolve_kek
from keyturn.kek.local import from_file, key_file, pending_path
from keyturn.keys import keystore
from keyturn.keys.audit import AuditLog
from keyturn.legacy import LegacyReader, legacy_secrets

#: The least time between two look-ups of the newest version for tokens naming an
#: unknown one: forged headers cost at most 20 cheap queries a second, and a
#: genuine new version waits at most this long, never refused.
PROBE_SECONDS = 0.05
REWRAP_EVENT = "keyturn.rewrap_needed"
#: At most one rewrap_needed line per column in this long (the counter stays exact).
REWRAP_LOG_SECONDS = 60.0
log = logging.getLogger("keyturn")


class Store:
    """Encrypts and decrypts secrets under the keyring kept in the app's database."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        kek: KEK,
        loaded: keystore.LoadedKeyring,
        *,
        refresh_seconds: float | None = None,
    ) -> None:
        contract = config.apps.refresh_seconds
        if refresh_seconds is None:
            refresh_seconds = contract
        if not 0 <= refresh_seconds <= contract:
            raise ConfigError(
                f"refresh_seconds={refresh_seconds} breaks the app contract: a Store must "
                f"re-read the active key at least every {contract:g} s ([apps] refresh_seconds "
                "in keyturn.toml, which `destroy-key` relies on)"
            )
        self.config = config
        self.engine = engine
        self.kek = kek
        self.keyring_id = loaded.keyring_id
        self._keyring = loaded.keyring
        self._versions = loaded.versions
        self._lock = threading.Lock()
        self._refresh_seconds = refresh_seconds
        self._confirmed = time.monotonic()
        self._next_refresh = self._confirmed + refresh_seconds
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()
        readers = {
            spec.name: LegacyReader(spec, lambda s: legacy_secrets(s, config.base_dir))
            for spec in config.legacy
        }
        self._legacy = {c.name: readers[c.legacy] for c in config.columns if c.legacy}
        self._plaintext_columns = frozenset(c.name for c in config.columns if c.read_plaintext)
        #: Legacy and plaintext values read by the fallbacks, by column: each should be re-saved.
        self.rewrap_needed: Counter[str] = Counter()
        self._rewrap_reported: Counter[str] = Counter()
        self._rewrap_logged: dict[str, float] = {}
        self._audit: AuditLog | None = None

    def __repr__(self) -> str:
        return f"Store(config={str(self.config.path)!r}, active_version={self.active_version})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def audit(self) -> AuditLog:
        """The keyring's tamper-evident audit log (``keyturn_audit``)."""
        if self._audit is None or self._audit.kek is not self.kek:
            self._audit = AuditLog(self.engine, self.kek, self.keyring_id, self._kek_now)
        return self._audit

    def _kek_now(self) -> KEK:
        """The KEK that opens the keyring now (after a rotate-kek elsewhere), reloaded."""
        self.reload()
        return self.kek

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def active_version(self) -> int:
        return self._keyring.active_version

    @property
    def versions(self) -> tuple[KeyVersion, ...]:
        """Metadata of every key version as of the last (re)load."""
        return self._versions

    @overload
    def encrypt(self, plaintext: str | bytes, *, context: str) -> str: ...
    @overload
    def encrypt(self, plaintext: None, *, context: str) -> None: ...

    def encrypt(self, plaintext: str | bytes | None, *, context: str) -> str | None:
        """Seal ``plaintext`` under the active DEK, bound to ``context``; None stays
        None (a NULL column stays NULL).

        Seals only under a version confirmed active within the contract's
        refresh interval; if the database cannot confirm it for longer than
        that, raises OperationFailed rather than seal under a retired version.
        """
        if plaintext is None:
            return None
        if not isinstance(plaintext, str | bytes):
            raise TypeError(f"encrypt takes str or bytes, not {type(plaintext).__name__}")
        if time.monotonic() >= self._next_refresh:
            self._refresh_active()
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return self._keyring.encrypt(data, context)

    def encrypt_many(self, plaintexts: Sequence[bytes], contexts: Sequence[str] | str) -> list[str]:
        """:meth:`encrypt` for a batch (bytes, a context each or one for all), under the same rule:
        the active version is confirmed once for the batch."""
        if time.monotonic() >= self._next_refresh:
            self._refresh_active()
        return self._keyring.encrypt_many(plaintexts, contexts)

    @overload
    def decrypt_bytes(self, token: str | bytes, *, context: str) -> bytes: ...
    @overload
    def decrypt_bytes(self, token: None, *, context: str) -> None: ...

    def decrypt_bytes(self, token: str | bytes | None, *, context: str) -> bytes | None:
        """Open a token sealed for ``context``. InvalidToken if it fails for any reason;
        None (NULL) stays None, and '' (an empty column) stays empty. A BLOB or
        bytea column's value is given as the bytes read.

        On a column with a ``legacy`` reader, a value in that legacy layout is
        decrypted with the legacy key; on a column with ``read_plaintext = true``
        (a migration mode, off by default), a value that is not a kt1 token is
        returned as it is. Both are counted in :attr:`rewrap_needed` and logged
        as ``keyturn.rewrap_needed``.
        """
        if token is None or token == "" or token == b"":
            return None if token is None else b""
        if isinstance(token, bytes | bytearray | memoryview):
            stored = from_stored(token)
            if isinstance(stored, bytes):  # not UTF-8: not a token, maybe legacy
                return self._not_a_token(stored, context)
            token = stored
        if not isinstance(token, str):
            raise TypeError(f"decrypt takes a str or bytes token, not {type(token).__name__}")
        try:
            return self._keyring.decrypt(token, context)
        except UnknownKeyVersion as exc:
            if not self._reload_for(exc.version):
                raise
            return self._keyring.decrypt(token, context)
        except InvalidToken:
            return self._not_a_token(token, context)

    def _not_a_token(self, value: str | bytes, context: str) -> bytes:
        """A value that did not open as a kt1 token: read by the column's legacy
        reader or, in its migration mode, as plaintext; else InvalidToken."""
        column = column_of(context)
        reader = self._legacy.get(column)
        if reader is not None and reader.recognises(value):
            plaintext = reader.decrypt(value)
            self._note_rewrap(column, reader.spec.format, reader.spec.name)
            return plaintext
        if isinstance(value, bytes):
            if column in self._plaintext_columns:
                self._note_rewrap(column, "plaintext", "read_plaintext")
                return value
        elif column in self._plaintext_columns and not value.startswith("kt1:"):
            self._note_rewrap(column, "plaintext", "read_plaintext")
            return value.encode()
        raise InvalidToken()

    @overload
    def decrypt(self, token: str | bytes, *, context: str) -> str: ...
    @overload
    def decrypt(self, token: None, *, context: str) -> None: ...

    def decrypt(self, token: str | bytes | None, *, context: str) -> str | None:
        """Like :meth:`decrypt_bytes`, decoded as UTF-8."""
        if token is None:
            return None
        return self.decrypt_bytes(token, context=context).decode()

    def opener(self, context: str) -> Callable[[str], str]:
        """:meth:`decrypt` for many non-empty tokens of one column (an ORM load): a token
        on a version the keyring holds is opened by the keyring's opener for the
        context, rebuilt when a reload swaps the keyring; anything else goes
        through :meth:`decrypt` (reloads, migration modes, errors)."""
        seen: Keyring | None = None
        open_: Callable[[str], bytes] | None = None

        def open_token(token: str) -> str:
            nonlocal seen, open_
            ring = self._keyring
            if ring is not seen or open_ is None:
                seen, open_ = ring, ring.opener(context)
            try:
                return open_(token).decode()
            except (KeyturnError, UnicodeDecodeError, TypeError, AttributeError):
                return self.decrypt(token, context=context)

        return open_token

    def legacy_reader(self, column: str) -> LegacyReader | None:
        """The legacy reader configured for column ``table.column``, if any."""
        return self._legacy.get(column)

    def needs_rewrap(self, value: str | None) -> bool:
        """Whether the app should re-save this stored value through :meth:`encrypt`.

        True for a legacy value, a plaintext value, or a token under a key
        version that is no longer active; False for NULL and ''.
        """
        if not value:
            return False
        return not value.startswith(header(self._keyring.active_version))

    def _note_rewrap(self, column: str, kind: str, reader: str) -> None:
        """Count a legacy or plaintext read exactly; log it at most once a minute per
        column (with the count since the last line), not once per value."""
        with self._lock:
            self.rewrap_needed[column] += 1
            now = time.monotonic()
            if now < self._rewrap_logged.get(column, 0.0):
                return
            self._rewrap_logged[column] = now + REWRAP_LOG_SECONDS
            since = self.rewrap_needed[column] - self._rewrap_reported[column]
            self._rewrap_reported[column] = self.rewrap_needed[column]
        table, _, name = column.partition(".")
        log.warning(
            "%s table=%s column=%s format=%s reader=%s values=%d",
            REWRAP_EVENT,
            table,
            name,
            kind,
            reader,
            since,
            extra={
                "event": REWRAP_EVENT,
                "table": table,
                "column": name,
                "legacy_format": kind,
                "legacy_reader": reader,
                "values": since,
            },
        )

    def reload(self) -> None:
        """Re-read and unwrap the keyring (the drift check runs again).

        If the keyring was rewrapped under a new KEK (rotate-kek), the KEK is
        resolved again from the configuration (a replaced key file); if that
        does not open it either, KEKChanged: restart with the current KEK.
        """
        with self.engine.connect() as conn:
            try:
                loaded = keystore.load(conn, self.kek)
            except WrongKEK:
                kek, loaded = self._current_kek(conn)
                self.kek = kek
        with self._lock:
            self._keyring = loaded.keyring
            self._versions = loaded.versions
            self._confirmed = time.monotonic()
            self._next_refresh = self._confirmed + self._refresh_seconds

    def _current_kek(self, conn: Connection) -> tuple[KEK, keystore.LoadedKeyring]:
        try:
            return load_keyring(conn, resolve_kek(self.config))
        except CorruptKeyring:
            raise
        except KeyManagementError:
            raise KEKChanged(
                f"the keyring is no longer wrapped by this process's KEK ({self.kek.kek_id}) "
                "and the configured KEK source does not open it either: rotate-kek ran; "
                "restart this process with the current KEK (docs/KEYS.md)"
            ) from None

    def ping(self) -> None:
        """One round trip to the database (a health check); raises if it is unreachable."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def bound_columns(self) -> list[BoundColumn]:
        """The configured columns, checked against the live schema."""
        with self.engine.connect() as conn:
            return bind_columns(conn, self.config.columns)

    def close(self) -> None:
        self.engine.dispose()

    def _reload_for(self, version: int) -> bool:
        """Reload if ``version`` exists now. Only a version newer than all we hold
        can have appeared since we loaded. Look-ups of the newest version are
        spaced by PROBE_SECONDS (waiting, not refusing), so forged headers
        cannot flood the database and a genuine new version is always found."""
        with self._probe_lock:
            if version in self._keyring.versions:
                return True  # another thread reloaded meanwhile
            if version <= max(self._keyring.versions):
                return False
            wait = self._next_probe - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next_probe = time.monotonic() + PROBE_SECONDS
            with self.engine.connect() as conn:
                newest = keystore.newest_version(conn)
            if newest is None or version > newest:
                return False
            self.reload()
            return version in self._keyring.versions

    def _refresh_active(self) -> None:
        self._next_refresh = time.monotonic() + self._refresh_seconds
        try:
            with self.engine.connect() as conn:
                active = keystore.active_version(conn)
        except Exception as exc:  # the database is briefly unreachable
            if time.monotonic() - self._confirmed <= self.config.apps.refresh_seconds:
                return  # keep sealing under the version confirmed moments ago
            raise OperationFailed(
                "cannot confirm the active key version: the database has been unreachable "
                f"for over {self.config.apps.refresh_seconds:g} s ([apps] refresh_seconds); "
                f"not sealing under a version that may have been retired ({type(exc).__name__})"
            ) from None
        if active is not None and active != self._keyring.active_version:
            self.reload()
        else:
            self._confirmed = time.monotonic()


def load_keyring(conn: Connection, kek: KEK) -> tuple[KEK, keystore.LoadedKeyring]:
    """Load the keyring, finishing a ``rotate-kek`` that was killed after its commit.

    rotate-kek stages the new key file as ``<file>.pending`` before it commits;
    if the current file no longer opens the keyring but the staged one does,
    the commit happened, so the staged file is moved into place.
    """
    try:
        return kek, keystore.load(conn, kek)
    except WrongKEK:
        current = key_file(kek)
        if current is None:
            raise
        staged = pending_path(current)
        if not staged.exists():
            raise
        candidate = from_file(staged)
        loaded = keystore.load(conn, candidate)  # WrongKEK again if it does not open either
        try:
            os.replace(staged, current)
        except FileNotFoundError:  # rotate-kek itself (or another process) just moved it
            return from_file(current), loaded
        print(
            f"keyturn: warning: finished an interrupted rotate-kek: {current} now holds "
            "the new KEK",
            file=sys.stderr,
        )
        return from_file(current), loaded


def open(config_path: str | os.PathLike[str] | Config | None = None, **options: Any) -> Store:
    """Open the Store configured by ``keyturn.toml`` (or ``config_path``, or a
    :class:`Config` built in code, e.g. from Django settings).

    Checks that the KEK opens every data key and that the configured columns
    exist, so a misconfiguration fails here, at start-up.
    """
    config = config_path if isinstance(config_path, Config) else load_config(config_path)
    return open_config(config, **options)


def open_config(config: Config, **options: Any) -> Store:
    """:func:`open` for a configuration built in code (e.g. from Django settings)."""
    engine = connect(config.database)
    try:
        with engine.connect() as conn:
            if not keystore.is_initialized(conn):
                raise NotInitialized("this database has no keyturn keyring yet; run `keyturn init`")
            migrations.check(conn)
        kek = resolve_kek(config)
        with engine.connect() as conn:
            kek, loaded = load_keyring(conn, kek)
            bind_columns(conn, config.columns)
        return Store(config, engine, kek, loaded, **options)
    except BaseException:
        engine.dispose()
        raise
