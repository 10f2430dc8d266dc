"""Key-encryption keys: the interface and the local AES-256-GCM implementation.

A KEK wraps data keys (DEKs); it never touches the database. Only an identifier
derived one-way from it (``kek_id``) is stored beside each wrapped DEK, so an
operator can tell which KEK a keyring expects without the key being revealed.
Pure: parsing and wrapping only; where a KEK comes from is the ``keyturn.kek``
providers' business.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn.errors import InvalidKEK, WrongKEK

KEK_BYTES = 32
_GUIDANCE = (
    "expected 32 bytes written as 64 hex characters or base64; generate one with `keyturn gen-kek`"
)


@dataclass(frozen=True)
class KEKOrigin:
    """Where a KEK came from: a provider's scheme and its location, e.g. ``env`` and
    ``KEYTURN_KEK``, or ``file`` and a path. Shown as ``scheme:location``."""

    scheme: str
    location: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}" if self.location else self.scheme


class KEK(Protocol):
    """Anything that can wrap and unwrap data keys."""

    @property
    def kek_id(self) -> str:
        """A stable identifier of this KEK that reveals nothing about it."""
        ...

    @property
    def origin(self) -> KEKOrigin:
        """Where the KEK came from (never the key)."""
        ...

    @property
    def source(self) -> str:
        """``str(origin)``, e.g. ``env:KEYTURN_KEK``, for messages."""
        ...

    def weakness(self) -> str | None:
        """Why this KEK is trivially weak, or None (a KMS generates its own keys)."""
        ...

    def wrap(self, dek: bytes, aad: bytes) -> str:
        """Encrypt a DEK; the result is text stored in ``keyturn_keys``."""
        ...

    def unwrap(self, wrapped: str, aad: bytes) -> bytes:
        """Decrypt a wrapped DEK; raise WrongKEK if this KEK did not wrap it."""
        ...


@runtime_checkable
class ManagedKEK(KEK, Protocol):
    """A KEK a KMS holds and rotates itself (Transit): rotate-kek takes no new key."""

    def rotate(self) -> int:
        """Rotate the key inside the KMS; return its new version."""
        ...

    def rewrap(self, wrapped: str) -> str:
        """Re-encrypt a wrapped value under the KMS key's latest version, inside the KMS."""
        ...

    def set_min_decryption_version(self, version: int) -> None:
        """Stop the KMS decrypting with versions older than ``version``."""
        ...


class LocalKEK:
    """A 256-bit KEK held in process memory (from an env var or a key file)."""

    __slots__ = ("_aead", "_key", "kek_id", "origin", "source")

    def __init__(self, key: bytes, origin: KEKOrigin | str) -> None:
        """``origin`` may be a bare label (e.g. ``"prompt"``) for a key from nowhere else."""
        self.origin = origin if isinstance(origin, KEKOrigin) else KEKOrigin(origin)
        self.source = str(self.origin)
        if len(key) != KEK_BYTES:
            raise InvalidKEK(f"KEK from {self.source} is malformed: {_GUIDANCE}")
        self._key = key
        self._aead = AESGCM(key)
        digest = hmac.new(key, b"keyturn kek-id v1", hashlib.sha256).digest()
        self.kek_id = "local:" + digest[:8].hex()

    def __repr__(self) -> str:
        return f"LocalKEK(kek_id={self.kek_id!r}, source={self.source!r}, key=<redacted>)"

    def wrap(self, dek: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, dek, aad)
        return base64.urlsafe_b64encode(blob).decode("ascii")

    def unwrap(self, wrapped: str, aad: bytes) -> bytes:
        try:
            blob = base64.urlsafe_b64decode(wrapped.encode("ascii"))
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except (InvalidTag, ValueError, binascii.Error):
            raise WrongKEK(f"the KEK from {self.source} does not open this keyring") from None

    def weakness(self) -> str | None:
        """Why this KEK is trivially weak, or None (see :func:`weakness`)."""
        return weakness(self._key)

    def key_text(self) -> str:
        """The key as 64 hex characters, for writing a key file (mode 0600)."""
        return self._key.hex()


def parse_kek(text: str, source: str) -> bytes:
    """Decode a KEK given as 64 hex characters or base64; never echo it on error."""
    value = text.strip()
    if len(value) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(
            value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4),
            validate=True,
        )
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != KEK_BYTES:
        raise InvalidKEK(f"KEK from {source} is malformed: {_GUIDANCE}")
    return raw


def weakness(key: bytes) -> str | None:
    """Why a KEK is trivially weak (all-zero, repeated pattern, sequence), or None.

    A random 32-byte key has about 30 distinct byte values; these checks reject
    hand-typed or placeholder keys (e.g. seed 004's all-zero "dev fallback")
    with negligible chance of refusing a real one.
    """
    if not any(key):
        return "it is all zeros"
    for period in (1, 2, 4, 8, 16):
        if key == key[:period] * (KEK_BYTES // period):
            return "it is a short repeated pattern"
    steps = {(key[i + 1] - key[i]) % 256 for i in range(len(key) - 1)}
    if len(steps) == 1:
        return "it is a counting sequence"
    if len(set(key)) < 12:
        return "it uses too few distinct byte values to be random"
    return None


def generate_kek_bytes() -> bytes:
    """32 fresh random bytes from the OS."""
    return os.urandom(KEK_BYTES)
