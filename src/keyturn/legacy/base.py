"""What every legacy format shares: the ``[[legacy]]`` spec, the format protocol,
and strict decoding of the text encodings apps used."""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ENCODINGS = ("base64", "base64url", "hex")
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
    #: aes-cbc: where the IV is ("key": its first 16 bytes; "prefix": before the data).
    iv: str = "key"
    #: aes-cbc: the padding ("pkcs7", "naive" '*'s, "zeroes" ANSI X.923, "oneandzeroes").
    padding: str = "naive"
    #: format python: the app's "module:function" reading a value, and telling its values.
    reader: str = ""
    recognise: str = ""
    #: HKDF's info (kdf "hkdf" of format fernet).
    info: str = ""
    #: More salts, each tried with every key (PBKDF2-derived Fernet keys rotate salts).
    salts: tuple[str, ...] = ()
    #: kdf "raw": how the key text is read ("auto": hex, then base64, then its characters).
    key_encoding: str = "auto"
    #: kdf "raw" with key_encoding "utf8": cut the key's bytes to this length (0: not cut),
    #: as apps that do `Buffer.from(key).subarray(0, 32)` do.
    key_bytes: int = 0

    @property
    def key_sources(self) -> tuple[str, ...]:
        """Where the keys come from, for messages: ``env:NAME`` / ``file:PATH``."""
        return tuple(f"env:{n}" for n in self.key_env) + tuple(f"file:{p}" for p in self.key_file)


class LegacyFormat(Protocol):
    """One legacy layout, registered by name in :mod:`keyturn.legacy` (``format = ...``).

    A format recognises its values by shape alone (no key), so ``status`` and
    ``encrypt-existing`` can tell them from plaintext; keys are derived only
    when a value must be decrypted.
    """

    #: The ``format = "..."`` value. A format may also set ``reads_bytes`` (it reads
    #: a binary column's bytes), ``grows`` (a plaintext may be longer than the value
    #: holding it), both False if absent, and ``authenticated`` (True if absent;
    #: False: no tag, so a wrong key shows only in the padding).
    name: str
    #: ``[[legacy]]`` keys this format accepts beyond name, format, prefix, key_env, key_file.
    options: frozenset[str]

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        """Raise ConfigError (naming ``where`` and the key) if the options make no sense."""
        ...

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> Any:
        """Keys from ``(source, secret text)`` pairs; LegacyKeyError names a bad source."""
        ...

    def parse(self, spec: LegacySpec, body: Any) -> Any | None:
        """The parts of a value (its prefix removed) of this layout, or None: text,
        or bytes for a format with ``reads_bytes``."""
        ...

    def decrypt(self, keys: Any, parts: Any) -> bytes:
        """The plaintext, trying each key in order; InvalidToken if none opens it."""
        ...

    def longest(self, parts: Any) -> int | None:
        """The most bytes the plaintext in ``parts`` can hold, told by their size
        alone (no key, nothing decrypted); None if the layout does not tell."""
        ...


def decode(text: str, encoding: str) -> bytes | None:
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
