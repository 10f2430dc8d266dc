"""``format = "aes-gcm"``: a homegrown AES-GCM layout (IV, tag and ciphertext in some
order and encoding), its key raw or derived with SHA-256, PBKDF2 or scrypt."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keyturn.errors import ConfigError, InvalidToken, LegacyKeyError
from keyturn.legacy.base import ENCODINGS, LegacySpec, decode

ORDERS = ("iv,tag,ct", "iv,ct,tag")
KDFS = ("raw", "sha256", "pbkdf2", "scrypt")
KEY_ENCODINGS = ("auto", "hex", "base64", "base64url", "utf8")
PBKDF2_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha512": hashes.SHA512(),
    "sha1": hashes.SHA1(),  # noqa: S303 - only to read what an old app wrote
}
TAG_LEN = 16
_AES_KEY_LENGTHS = (16, 24, 32)


class AesGcm:
    """The ``aes-gcm`` legacy format."""

    name = "aes-gcm"
    options = frozenset(
        {"encoding", "order", "separator", "iv_len", "kdf", "suffix",
         "salt", "iterations", "hash", "n", "r", "p", "key_encoding", "key_bytes"}
    )  # fmt: skip

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        if spec.encoding not in ENCODINGS:
            raise ConfigError(f"{where}: `encoding` must be one of {', '.join(ENCODINGS)}")
        if spec.order not in ORDERS:
            raise ConfigError(f'{where}: `order` must be "iv,tag,ct" or "iv,ct,tag"')
        if not 8 <= spec.iv_len <= 64:
            raise ConfigError(f"{where}: `iv_len` must be between 8 and 64 bytes")
        self.check_key_options(spec, entry, where)

    def check_key_options(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        """The key derivation's options (shared with aes-cbc)."""
        if spec.kdf not in KDFS:
            raise ConfigError(f"{where}: `kdf` must be one of {', '.join(KDFS)}")
        if spec.kdf in ("pbkdf2", "scrypt") and not spec.salt:
            raise ConfigError(f"{where}: kdf {spec.kdf} needs `salt` (the text the app used)")
        if spec.kdf == "pbkdf2":
            if spec.iterations <= 0:
                raise ConfigError(f"{where}: kdf pbkdf2 needs `iterations` (a positive integer)")
            if spec.hash not in PBKDF2_HASHES:
                raise ConfigError(f"{where}: `hash` must be one of {', '.join(PBKDF2_HASHES)}")
        if spec.kdf == "scrypt" and (
            spec.n < 2 or spec.n & (spec.n - 1) or spec.r < 1 or spec.p < 1
        ):
            raise ConfigError(f"{where}: scrypt needs `n` a power of two, `r` and `p` positive")
        if spec.kdf in ("raw", "sha256") and ({"salt", "iterations", "n", "r", "p"} & set(entry)):
            raise ConfigError(f"{where}: salt and work factors apply only to kdf pbkdf2 or scrypt")
        if spec.key_encoding not in KEY_ENCODINGS:
            raise ConfigError(f"{where}: `key_encoding` must be one of {', '.join(KEY_ENCODINGS)}")
        if spec.kdf != "raw" and {"key_encoding", "key_bytes"} & set(entry):
            raise ConfigError(f"{where}: key_encoding and key_bytes apply only to kdf raw")
        if "key_bytes" in entry and (
            spec.key_encoding != "utf8" or spec.key_bytes not in _AES_KEY_LENGTHS
        ):
            raise ConfigError(
                f'{where}: `key_bytes` (16, 24 or 32) cuts a key read with key_encoding = "utf8"'
            )

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> Any:
        return tuple(_derive(spec, source, text) for source, text in secrets)

    def parse(self, spec: LegacySpec, body: str) -> tuple[bytes, bytes] | None:
        """(iv, ciphertext‖tag) of a value of this layout, or None."""
        iv_len = spec.iv_len
        if not spec.separator:  # one encoded run: the usual layout, sliced
            raw = decode(body, spec.encoding)
            if raw is None or len(raw) < iv_len + TAG_LEN:
                return None
            if spec.order == "iv,tag,ct":
                return raw[:iv_len], raw[iv_len + TAG_LEN :] + raw[iv_len : iv_len + TAG_LEN]
            return raw[:iv_len], raw[iv_len:]  # iv, then ciphertext‖tag as it is
        pieces = body.split(spec.separator)
        if len(pieces) != 3:
            return None
        names = spec.order.split(",")
        part = dict(zip(names, (decode(p, spec.encoding) for p in pieces), strict=True))
        iv, tag, ct = part["iv"], part["tag"], part["ct"]
        if iv is None or tag is None or ct is None:
            return None
        if len(iv) != iv_len or len(tag) != TAG_LEN:
            return None
        return iv, ct + tag

    def longest(self, parts: tuple[bytes, bytes]) -> int:
        return len(parts[1]) - TAG_LEN  # exactly: GCM adds only its tag

    def decrypt(self, keys: Any, parts: tuple[bytes, bytes]) -> bytes:
        iv, sealed = parts
        for aead in keys:
            try:
                plain: bytes = aead.decrypt(iv, sealed, None)
            except InvalidTag:
                continue
            return plain
        raise InvalidToken()


def _derive(spec: LegacySpec, source: str, text: str) -> AESGCM:
    return AESGCM(derive_key(spec, source, text))


def derive_key(spec: LegacySpec, source: str, text: str) -> bytes:
    """The AES key from a key text, by the reader's ``kdf`` (shared with aes-cbc)."""
    material = (text + spec.suffix).encode()
    if spec.kdf == "sha256":
        return hashlib.sha256(material).digest()
    if spec.kdf == "pbkdf2":
        return PBKDF2HMAC(PBKDF2_HASHES[spec.hash], 32, spec.salt.encode(), spec.iterations).derive(
            material
        )
    if spec.kdf == "scrypt":
        return Scrypt(spec.salt.encode(), 32, spec.n, spec.r, spec.p).derive(material)
    return raw_key(spec, source, text)


def raw_key(spec: LegacySpec, source: str, text: str) -> bytes:
    """The key a ``kdf = "raw"`` reader uses: read as ``key_encoding`` says, or (auto)
    as hex, then base64, then its characters; the error says how it was read."""
    raw = text.strip()
    tried = []
    if spec.key_encoding == "utf8":
        key = raw.encode()
        if spec.key_bytes:
            key = key[: spec.key_bytes] if len(key) >= spec.key_bytes else b""
        if len(key) in _AES_KEY_LENGTHS:
            return key
        tried.append(f"its characters ({len(raw.encode())} UTF-8 bytes)")
    else:
        encodings = ("hex", "base64", "base64url") if spec.key_encoding == "auto" else ()
        for encoding in encodings or (spec.key_encoding,):
            decoded = decode(raw, encoding)
            if decoded is not None and len(decoded) in _AES_KEY_LENGTHS:
                return decoded
            tried.append(
                f"{encoding} ({'not ' + encoding if decoded is None else f'{len(decoded)} bytes'})"
            )
        if spec.key_encoding == "auto":
            if len(raw.encode()) in _AES_KEY_LENGTHS:
                return raw.encode()
            tried.append(f"its characters ({len(raw.encode())} UTF-8 bytes)")
    raise LegacyKeyError(
        f"legacy reader {spec.name}: the key from {source} is not a 16-, 24- or 32-byte "
        f"AES key read as {', '.join(tried)}; set key_encoding (hex, base64, utf8) to say "
        "how the app reads it, key_bytes = 32 if it cuts a longer text, or `kdf` for a passphrase"
    )


FORMAT = AesGcm()
