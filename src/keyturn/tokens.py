"""The ``kt1`` ciphertext format: pure functions, no I/O (see docs/FORMAT.md).

A token is ``kt1:<version>:<payload>`` where ``payload`` is unpadded base64url
of ``nonce(12) || ciphertext || tag(16)`` under AES-256-GCM, with the AAD
``kt1:<version>:<context>``. Binding the version and context into the AAD means
a token moved to another column (or row, with ``bind = "row"``), or whose header
was edited, fails authentication instead of decrypting to garbage.
"""

from __future__ import annotations

import base64
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import InvalidToken

MAGIC = "kt1"
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
MAX_VERSION = 2**31 - 1

_PAYLOAD_RE = re.compile(r"[A-Za-z0-9_-]+")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# Unused low bits of the last character, by payload length mod 4. They must be
# zero, so that every token has exactly one spelling and any edit is caught.
_SPARE_BITS = {2: 0x0F, 3: 0x03}


def header(version: int) -> str:
    """The ``kt1:<version>:`` prefix of every token sealed under ``version``."""
    return f"{MAGIC}:{version}:"


def aad(version: int, context: str) -> bytes:
    """Associated data for a token: ``kt1:<version>:<context>`` in UTF-8."""
    return f"{MAGIC}:{version}:{context}".encode()


def seal(
    aead: AESGCM,
    version: int,
    context: str,
    plaintext: bytes,
    nonce: bytes | None = None,
) -> str:
    """Encrypt ``plaintext`` into a token. ``nonce`` is for test vectors only."""
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    elif len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    prefix = header(version)
    blob = nonce + aead.encrypt(nonce, plaintext, (prefix + context).encode())
    return prefix + base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def parse(token: str) -> tuple[int, bytes]:
    """Split a token into (version, nonce||ciphertext||tag), strictly.

    Raises InvalidToken for anything that is not a canonical kt1 token.
    """
    if not isinstance(token, str):
        raise InvalidToken()
    parts = token.split(":", 2)
    if len(parts) != 3 or parts[0] != MAGIC:
        raise InvalidToken()
    return _parse_version(parts[1]), _b64decode(parts[2])


def open_blob(aead: AESGCM, version: int, blob: bytes, context: str) -> bytes:
    """Authenticate and decrypt a parsed token's blob."""
    try:
        return aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad(version, context))
    except InvalidTag:
        raise InvalidToken() from None


def version_of(value: str) -> int | None:
    """The version a value's header names, or None if it is not a kt1 token.

    Only the header is checked; the payload is not decoded.
    """
    if not value.startswith(MAGIC + ":"):
        return None
    parts = value.split(":", 2)
    if len(parts) != 3 or not parts[2]:
        return None
    try:
        return _parse_version(parts[1])
    except InvalidToken:
        return None


def token_length(version: int, plaintext_bytes: int) -> int:
    """Length in characters of the token for a plaintext of this many bytes."""
    n = plaintext_bytes + OVERHEAD
    return len(header(version)) + (n * 4 + 2) // 3


def _parse_version(text: str) -> int:
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()) or text[0] == "0":
        raise InvalidToken()
    version = int(text)
    if version > MAX_VERSION:
        raise InvalidToken()
    return version


def _b64decode(text: str) -> bytes:
    rem = len(text) % 4
    if rem == 1 or not _PAYLOAD_RE.fullmatch(text):
        raise InvalidToken()
    if rem:
        if _INDEX[text[-1]] & _SPARE_BITS[rem]:
            raise InvalidToken()
        text += "=" * (4 - rem)
    blob = base64.urlsafe_b64decode(text)
    if len(blob) < OVERHEAD:
        raise InvalidToken()
    return blob
