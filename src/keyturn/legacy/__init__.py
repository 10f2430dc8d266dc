"""Readers for the ciphertexts apps wrote before keyturn (``[[legacy]]`` in keyturn.toml).

Pure: a :class:`LegacySpec` describes a homegrown AES-GCM layout or Fernet;
a :class:`LegacyReader` recognises such values by their shape alone (no key
needed, so ``status`` and ``encrypt-existing`` can tell them from plaintext)
and decrypts them with keys it asks its loader for only when first needed.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, MultiFernet
from cryptography.fernet import InvalidToken as FernetInvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keyturn.errors import ConfigError, InvalidToken, LegacyKeyError
from keyturn.keyfiles import read_private_file

AES_GCM = "aes-gcm"
FERNET = "fernet"
FORMATS = (AES_GCM, FERNET)
ENCODINGS = ("base64", "base64url", "hex")
ORDERS = ("iv,tag,ct", "iv,ct,tag")
KDFS = ("raw", "sha256", "pbkdf2", "scrypt")
PBKDF2_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha512": hashes.SHA512(),
    "sha1": hashes.SHA1(),  # noqa: S303 - only to read what an old app wrote
}
TAG_LEN = 16
_AES_KEY_LENGTHS = (16, 24, 32)

_COMMON_KEYS = {"name", "format", "prefix", "key_env", "key_file"}
_AES_KEYS = {
    "encoding", "order", "separator", "iv_len", "kdf", "suffix",
    "salt", "iterations", "hash", "n", "r", "p",
}  # fmt: skip
_INTS = {"iv_len", "iterations", "n", "r", "p"}
_TYPED = _AES_KEYS | {"prefix"}
_PATTERNS = {
    "base64": re.compile(r"[A-Za-z0-9+/]*={0,2}"),
    "base64url": re.compile(r"[A-Za-z0-9_-]*={0,2}"),
    "hex": re.compile(r"(?:[0-9a-fA-F]{2})*"),
}


@dataclass(frozen=True)
class LegacySpec:
    """One ``[[legacy]]`` entry: a layout and where its keys come from (never the keys)."""

    name: str
    format: str
    key_env: tuple[str, ...] = ()
    key_file: tuple[str, ...] = ()
    prefix: str = ""
    encoding: str = "base64"
    order: str = "iv,tag,ct"
    separator: str = ""
    iv_len: int = 12
    kdf: str = "raw"
    suffix: str = ""
    salt: str = ""
    iterations: int = 0
    hash: str = "sha256"
    n: int = 2**14
    r: int = 8
    p: int = 1

    @property
    def key_sources(self) -> tuple[str, ...]:
        """Where the keys come from, for messages: ``env:NAME`` / ``file:PATH``."""
        return tuple(f"env:{n}" for n in self.key_env) + tuple(f"file:{p}" for p in self.key_file)


def parse_legacy(entry: Any, where: str) -> LegacySpec:
    """Validate one ``[[legacy]]`` table; every error names the entry and the key."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: `name` is required and must be a string")
    where = f"{where} ({name})"
    fmt = entry.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f'{where}: `format` must be "aes-gcm" or "fernet"')
    if {"key", "keys", "secret", "password"} & set(entry):
        raise ConfigError(
            f"{where}: keys never go in keyturn.toml; name an env var with `key_env` "
            "or a file with `key_file`"
        )
    allowed = _COMMON_KEYS | (_AES_KEYS if fmt == AES_GCM else set())
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
    for key in sorted(set(entry) & _TYPED):
        kind = int if key in _INTS else str
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: `{key}` must be a {kind.__name__}")
        fields[key] = value
    spec = LegacySpec(name, fmt, **fields)
    _check(spec, entry, where)
    return spec


def _names(value: Any, where: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{where}: `{key}` must be a name or a list of names")
    return tuple(items)


def _check(spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
    if spec.format == FERNET:
        return
    if spec.encoding not in ENCODINGS:
        raise ConfigError(f"{where}: `encoding` must be one of {', '.join(ENCODINGS)}")
    if spec.order not in ORDERS:
        raise ConfigError(f'{where}: `order` must be "iv,tag,ct" or "iv,ct,tag"')
    if not 8 <= spec.iv_len <= 64:
        raise ConfigError(f"{where}: `iv_len` must be between 8 and 64 bytes")
    if spec.kdf not in KDFS:
        raise ConfigError(f"{where}: `kdf` must be one of {', '.join(KDFS)}")
    if spec.kdf in ("pbkdf2", "scrypt") and not spec.salt:
        raise ConfigError(f"{where}: kdf {spec.kdf} needs `salt` (the text the app used)")
    if spec.kdf == "pbkdf2":
        if spec.iterations <= 0:
            raise ConfigError(f"{where}: kdf pbkdf2 needs `iterations` (a positive integer)")
        if spec.hash not in PBKDF2_HASHES:
            raise ConfigError(f"{where}: `hash` must be one of {', '.join(PBKDF2_HASHES)}")
    if spec.kdf == "scrypt" and (spec.n < 2 or spec.n & (spec.n - 1) or spec.r < 1 or spec.p < 1):
        raise ConfigError(f"{where}: scrypt needs `n` a power of two, `r` and `p` positive")
    if spec.kdf in ("raw", "sha256") and ({"salt", "iterations", "n", "r", "p"} & set(entry)):
        raise ConfigError(f"{where}: salt and work factors apply only to kdf pbkdf2 or scrypt")


def _decode(text: str, encoding: str) -> bytes | None:
    """Strict decoding (padding optional for base64); None if ``text`` is not of it."""
    if not _PATTERNS[encoding].fullmatch(text):
        return None
    try:
        if encoding == "hex":
            return binascii.unhexlify(text)
        body = text.rstrip("=")
        if len(body) % 4 == 1:
            return None
        if encoding == "base64url":
            body = body.replace("-", "+").replace("_", "/")
        return binascii.a2b_base64(body + "=" * (-len(body) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def derive_keys(spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> Any:
    """The decryption keys from ``(source, secret text)`` pairs: AES keys, or a MultiFernet.

    Raises LegacyKeyError naming the source (never the value) of a malformed key.
    """
    if spec.format == FERNET:
        fernets = []
        for source, text in secrets:
            try:
                fernets.append(Fernet(text.strip().encode()))
            except (ValueError, binascii.Error):
                raise LegacyKeyError(
                    f"legacy reader {spec.name}: the key from {source} is not a Fernet key "
                    "(32 bytes, url-safe base64)"
                ) from None
        return MultiFernet(fernets)
    return tuple(_derive_aes(spec, source, text) for source, text in secrets)


def _derive_aes(spec: LegacySpec, source: str, text: str) -> AESGCM:
    material = (text + spec.suffix).encode()
    if spec.kdf == "sha256":
        return AESGCM(hashlib.sha256(material).digest())
    if spec.kdf == "pbkdf2":
        kdf = PBKDF2HMAC(PBKDF2_HASHES[spec.hash], 32, spec.salt.encode(), spec.iterations)
        return AESGCM(kdf.derive(material))
    if spec.kdf == "scrypt":
        return AESGCM(Scrypt(spec.salt.encode(), 32, spec.n, spec.r, spec.p).derive(material))
    raw = text.strip()
    for encoding in ("hex", "base64", "base64url"):
        key = _decode(raw, encoding)
        if key is not None and len(key) in _AES_KEY_LENGTHS:
            return AESGCM(key)
    if len(raw.encode()) in _AES_KEY_LENGTHS:
        return AESGCM(raw.encode())
    raise LegacyKeyError(
        f"legacy reader {spec.name}: the key from {source} is not a 128-, 192- or 256-bit "
        "key in hex, base64 or 16/24/32 characters (for a passphrase set `kdf`)"
    )


SecretLoader = Callable[[LegacySpec], Sequence[tuple[str, str]]]


class LegacyReader:
    """Recognises and decrypts one legacy layout; keys are loaded on first decrypt."""

    def __init__(self, spec: LegacySpec, load_secrets: SecretLoader) -> None:
        self.spec = spec
        self._load_secrets = load_secrets
        self._keys: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LegacyReader(name={self.spec.name!r}, format={self.spec.format!r})"

    def recognises(self, value: Any) -> bool:
        """Whether ``value`` has this layout's shape (checked without any key)."""
        if not isinstance(value, str) or not value:
            return False
        if self.spec.format == FERNET:
            return self._fernet_token(value) is not None
        return self._aes_parts(value) is not None

    def keys(self) -> Any:
        """The derived keys; LegacyKeyError names the missing or malformed source."""
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    self._keys = derive_keys(self.spec, self._load_secrets(self.spec))
        return self._keys

    def has_keys(self) -> bool:
        """Whether every key source is present and well-formed."""
        try:
            self.keys()
        except LegacyKeyError:
            return False
        return True

    def decrypt(self, value: str) -> bytes:
        """The plaintext, trying each key in order. InvalidToken if none opens it."""
        keys = self.keys()
        if self.spec.format == FERNET:
            token = self._fernet_token(value)
            if token is None:
                raise InvalidToken()
            try:
                result: bytes = keys.decrypt(token)
            except FernetInvalidToken:
                raise InvalidToken() from None
            return result
        parts = self._aes_parts(value)
        if parts is None:
            raise InvalidToken()
        iv, sealed = parts
        for aead in keys:
            try:
                plain: bytes = aead.decrypt(iv, sealed, None)
            except InvalidTag:
                continue
            return plain
        raise InvalidToken()

    def _body(self, value: str) -> str | None:
        prefix = self.spec.prefix
        if prefix:
            return value[len(prefix) :] if value.startswith(prefix) else None
        return None if value.startswith("kt1:") else value

    def _fernet_token(self, value: str) -> bytes | None:
        body = self._body(value)
        if body is None:
            return None
        raw = _decode(body, "base64url")
        # version 0x80, 8-byte time, 16-byte IV, whole AES blocks, 32-byte HMAC
        if raw is None or len(raw) < 73 or raw[0] != 0x80 or (len(raw) - 57) % 16:
            return None
        return body.encode()

    def _aes_parts(self, value: str) -> tuple[bytes, bytes] | None:
        """(iv, ciphertext‖tag) of a value of this layout, or None."""
        spec = self.spec
        body = self._body(value)
        if body is None:
            return None
        names = spec.order.split(",")
        part: dict[str, bytes | None]
        if spec.separator:
            pieces = body.split(spec.separator)
            if len(pieces) != 3:
                return None
            part = dict(zip(names, (_decode(p, spec.encoding) for p in pieces), strict=True))
        else:
            raw = _decode(body, spec.encoding)
            if raw is None:
                return None
            head, rest = raw[: spec.iv_len], raw[spec.iv_len :]
            if spec.order == "iv,tag,ct":
                part = {"iv": head, "tag": rest[:TAG_LEN], "ct": rest[TAG_LEN:]}
            else:
                part = {"iv": head, "ct": rest[:-TAG_LEN], "tag": rest[-TAG_LEN:]}
        iv, tag, ct = part["iv"], part["tag"], part["ct"]
        if iv is None or tag is None or ct is None:
            return None
        if len(iv) != spec.iv_len or len(tag) != TAG_LEN:
            return None
        return iv, ct + tag


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
