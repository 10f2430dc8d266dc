"""``format = "aes-cbc"``: AES-CBC layouts with no authentication tag, such as
sqlalchemy-utils' default ``AesEngine`` (key SHA-256 of the app's key text, IV
the key's first 16 bytes, padding "naive", base64).

CBC carries no tag, so a value opened with a wrong key, or edited, is caught
only by its padding and by its plaintext being UTF-8 text. That check is weak
for one value and strong over many: ``import-legacy`` therefore requires every
sampled value to open (an authenticated format needs only some), and
docs/ADOPTING.md says what CBC cannot detect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keyturn.errors import ConfigError, InvalidToken
from keyturn.legacy.aesgcm import FORMAT as GCM
from keyturn.legacy.aesgcm import derive_key
from keyturn.legacy.base import ENCODINGS, LegacySpec, decode

BLOCK = 16
IVS = ("key", "prefix")
PADDINGS = ("pkcs7", "naive", "zeroes", "oneandzeroes")


class AesCbc:
    """The ``aes-cbc`` legacy format."""

    name = "aes-cbc"
    #: No tag: a wrong key is told only by padding and UTF-8 (see import_legacy).
    authenticated = False
    options = frozenset(
        {"encoding", "iv", "padding", "kdf", "suffix", "salt", "iterations", "hash",
         "n", "r", "p", "key_encoding", "key_bytes"}
    )  # fmt: skip

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        if spec.encoding not in ENCODINGS:
            raise ConfigError(f"{where}: `encoding` must be one of {', '.join(ENCODINGS)}")
        if spec.iv not in IVS:
            raise ConfigError(
                f'{where}: `iv` must be "key" (the key\'s first 16 bytes, as sqlalchemy-utils) '
                'or "prefix" (16 bytes before the ciphertext)'
            )
        if spec.padding not in PADDINGS:
            raise ConfigError(f"{where}: `padding` must be one of {', '.join(PADDINGS)}")
        GCM.check_key_options(spec, entry, where)

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> Any:
        return tuple(derive_key(spec, source, text) for source, text in secrets)

    def parse(self, spec: LegacySpec, body: str) -> tuple[LegacySpec, bytes] | None:
        raw = decode(body, spec.encoding)
        least = 2 * BLOCK if spec.iv == "prefix" else BLOCK
        if raw is None or len(raw) < least or len(raw) % BLOCK:
            return None
        return spec, raw

    def longest(self, parts: tuple[LegacySpec, bytes]) -> int:
        spec, raw = parts
        # Every padding adds at least one byte; a prefixed IV is not ciphertext.
        return len(raw) - (BLOCK if spec.iv == "prefix" else 0) - 1

    def decrypt(self, keys: Any, parts: tuple[LegacySpec, bytes]) -> bytes:
        spec, raw = parts
        for key in keys:
            if spec.iv == "prefix":
                iv, body = raw[:BLOCK], raw[BLOCK:]
            else:
                iv, body = key[:BLOCK], raw
            decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            padded = decryptor.update(body) + decryptor.finalize()
            plain = _unpad(padded, spec.padding)
            if plain is None:
                continue
            try:
                plain.decode("utf-8")
            except UnicodeDecodeError:
                continue
            return plain
        raise InvalidToken()


def _unpad(data: bytes, padding: str) -> bytes | None:
    """``data`` without its padding, or None if the padding is not well formed."""
    if padding == "naive":  # sqlalchemy-utils: '*' characters, stripped (all of them)
        return data.rstrip(b"*") if data.endswith(b"*") else None
    if padding == "oneandzeroes":
        stripped = data.rstrip(b"\0")
        cut = len(data) - len(stripped)
        return stripped[:-1] if stripped.endswith(b"\x80") and cut < BLOCK else None
    n = data[-1]
    if not 1 <= n <= BLOCK:
        return None
    fill = bytes([n]) if padding == "pkcs7" else b"\0"  # zeroes: ANSI X.923
    if data[-n:-1] != fill * (n - 1):
        return None
    return data[:-n]


FORMAT = AesCbc()
