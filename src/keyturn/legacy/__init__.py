"""Readers for the ciphertexts apps wrote before keyturn (``[[legacy]]`` in keyturn.toml).

Each layout is a format module behind the :class:`~keyturn.legacy.base.LegacyFormat`
protocol, registered here by name: ``aes-gcm`` (:mod:`keyturn.legacy.aesgcm`) and
``fernet`` (:mod:`keyturn.legacy.fernet`); :func:`register` adds one. A
:class:`LegacyReader` recognises a format's values by their shape alone and
decrypts them with keys it asks its loader for only when first needed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from keyturn.errors import ConfigError, InvalidToken, LegacyKeyError
from keyturn.keyfiles import read_private_file
from keyturn.legacy import aescbc, aesgcm, fernet, python
from keyturn.legacy.base import LegacyFormat, LegacySpec

AES_GCM = aesgcm.FORMAT.name
FERNET = fernet.FORMAT.name
#: :meth:`LegacyReader.longest` of a value whose layout does not bound its plaintext.
UNBOUNDED = sys.maxsize
_FORMATS: dict[str, LegacyFormat] = {
    f.name: f for f in (aesgcm.FORMAT, aescbc.FORMAT, fernet.FORMAT, python.FORMAT)
}

_COMMON_KEYS = {"name", "format", "prefix", "key_env", "key_file"}
# Each option is typed by its LegacySpec field.
_TYPES = {f.name: int if f.type == "int" else str for f in fields(LegacySpec)}

__all__ = [
    "AES_GCM",
    "FERNET",
    "LegacyFormat",
    "LegacyReader",
    "LegacySpec",
    "UNBOUNDED",
    "legacy_secrets",
    "parse_legacy",
    "register",
]


def register(fmt: LegacyFormat) -> None:
    """Make ``format = fmt.name`` available to ``[[legacy]]`` entries."""
    _FORMATS[fmt.name] = fmt


def parse_legacy(entry: Any, where: str) -> LegacySpec:
    """Validate one ``[[legacy]]`` table; every error names the entry and the key."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: `name` is required and must be a string")
    where = f"{where} ({name})"
    fmt = entry.get("format")
    if fmt not in _FORMATS:
        raise ConfigError(f"{where}: `format` must be " + " or ".join(f'"{f}"' for f in _FORMATS))
    if {"key", "keys", "secret", "password"} & set(entry):
        raise ConfigError(
            f"{where}: keys never go in keyturn.toml; name an env var with `key_env` "
            "or a file with `key_file`"
        )
    layout = _FORMATS[fmt]
    allowed = _COMMON_KEYS | layout.options
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: key(s) {', '.join(unknown)} do not apply to format {fmt}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    key_env = _names(entry.get("key_env", ()), where, "key_env")
    key_file = _names(entry.get("key_file", ()), where, "key_file")
    if bool(key_env) == bool(key_file):
        raise ConfigError(
            f"{where}: give exactly one of `key_env` (env var name, or a list of them tried "
            "in order) and `key_file`"
        )
    fields: dict[str, Any] = {"key_env": key_env, "key_file": key_file}
    for key in sorted(set(entry) & (layout.options | {"prefix"})):
        value = entry[key]
        if key == "salts":
            fields[key] = _names(value, where, key)
            continue
        kind = _TYPES[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: `{key}` must be a {kind.__name__}")
        fields[key] = value
    spec = LegacySpec(name, fmt, **fields)
    layout.check(spec, entry, where)
    return spec


def _names(value: Any, where: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{where}: `{key}` must be a name or a list of names")
    return tuple(items)


SecretLoader = Callable[[LegacySpec], Sequence[tuple[str, str]]]


class LegacyReader:
    """Recognises and decrypts one legacy layout; keys are loaded on first decrypt."""

    def __init__(self, spec: LegacySpec, load_secrets: SecretLoader) -> None:
        self.spec = spec
        self.format = _FORMATS[spec.format]
        self._load_secrets = load_secrets
        self._keys: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LegacyReader(name={self.spec.name!r}, format={self.spec.format!r})"

    def recognises(self, value: Any) -> bool:
        """Whether ``value`` has this layout's shape (checked without any key). Bytes
        (a binary column's value that is not UTF-8) only for a format reading them."""
        return self._recognised(value) is not None

    def longest(self, value: Any) -> int | None:
        """The most bytes the plaintext of a value :meth:`recognises` can hold, told
        by its size alone (no key, nothing decrypted): :data:`UNBOUNDED` if the
        layout does not tell; None for a value not of this layout."""
        parts = self._recognised(value)
        if parts is None:
            return None
        most = self.format.longest(parts)
        return UNBOUNDED if most is None else most

    def keys(self) -> Any:
        """The derived keys; LegacyKeyError names the missing or malformed source."""
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    self._keys = self.format.derive_keys(self.spec, self._load_secrets(self.spec))
        return self._keys

    def has_keys(self) -> bool:
        """Whether every key source is present and well-formed."""
        try:
            self.keys()
        except LegacyKeyError:
            return False
        return True

    def open(self, value: Any) -> bytes | None:
        """The plaintext of a value :meth:`recognises`, its layout read once; None for
        a value not of this layout; InvalidToken if no key opens it."""
        parts = self._recognised(value)
        return None if parts is None else self.format.decrypt(self.keys(), parts)

    def decrypt(self, value: str | bytes) -> bytes:
        """The plaintext, trying each key in order. InvalidToken if none opens it."""
        keys = self.keys()
        parts = self._parts(value)
        if parts is None:
            raise InvalidToken()
        return self.format.decrypt(keys, parts)

    def _recognised(self, value: Any) -> Any | None:
        """The parts of a value of this layout's shape, or None."""
        if isinstance(value, bytes):
            if not getattr(self.format, "reads_bytes", False):
                return None
        elif not isinstance(value, str):
            return None
        return self._parts(value) if value else None

    def _parts(self, value: str | bytes) -> Any | None:
        if isinstance(value, bytes):
            prefix: str | bytes = self.spec.prefix.encode()
            token: str | bytes = b"kt1:"
        else:
            prefix, token = self.spec.prefix, "kt1:"
        if prefix:
            body = value[len(prefix) :] if value.startswith(prefix) else None  # type: ignore[arg-type]
        else:
            body = None if value.startswith(token) else value  # type: ignore[arg-type]
        return None if body is None else self.format.parse(self.spec, body)


def legacy_secrets(spec: LegacySpec, base_dir: Path) -> list[tuple[str, str]]:
    """``(source, text)`` of a legacy reader's keys, in the order they are tried.

    Called only when a legacy value must be decrypted, so once no legacy value
    remains the keys can leave the environment.
    """
    found = []
    for name in spec.key_env:
        value = os.environ.get(name, "")
        if not value.strip():
            raise LegacyKeyError(
                f"legacy reader {spec.name} needs its key in env var {name}, which is not set "
                "(it is needed while legacy values remain; `keyturn status` counts them)"
            )
        found.append((f"env:{name}", value))
    for raw in spec.key_file:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else base_dir / path
        text = read_private_file(path, f"legacy key file of reader {spec.name}", LegacyKeyError)
        if not text:
            raise LegacyKeyError(f"the legacy key file {path} of reader {spec.name} is empty")
        found.append((f"file:{path}", text))
    return found
