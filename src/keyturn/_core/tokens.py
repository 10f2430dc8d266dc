"""The ``kt1`` ciphertext format: pure functions, no I/O (see docs/FORMAT.md).

A token is ``kt1:<version>:<payload>`` where ``payload`` is unpadded base64url
of ``nonce(12) || ciphertext || tag(16)`` under AES-256-GCM, with the AAD
``kt1:<version>:<context>``. Binding the version and context into the AAD means
a token moved to another column (or row, with ``bind = "row"``), or whose header
was edited, fails authentication instead of decrypting to garbage.
"""

from __future__ import annotations

import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn.errors import InvalidToken

MAGIC = "kt1"
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
MAX_VERSION = 2**31 - 1

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# Unused low bits of the last character, by payload length mod 4. They must be
# zero, so that every token has exactly one spelling and any edit is caught.
_SPARE_BITS = {2: 0x0F, 3: 0x03}
#: By payload length mod 4: the characters a payload may end with (those whose
#: spare bits are zero); a payload of length 1 mod 4 is never valid.
CLEAN_ENDS: tuple[frozenset[str], ...] = (
    frozenset(_ALPHABET),
    frozenset(),
    *(frozenset(c for c in _ALPHABET if not _INDEX[c] & _SPARE_BITS[r]) for r in (2, 3)),
)
# base64url -> standard alphabet; "+", "/" and "=" become "!", which the strict
# decoder rejects, so only the url-safe alphabet gets through.
TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
PADDING = {0: b"", 2: b"==", 3: b"="}
TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def header(version: int) -> str:
    """The ``kt1:<version>:`` prefix of every token sealed under ``version``."""
    return f"{MAGIC}:{version}:"


def aad(version: int, context: str) -> bytes:
    """Associated data for a token: ``kt1:<version>:<context>`` in UTF-8."""
    return f"{MAGIC}:{version}:{context}".encode()


def seal(
    aead: AESGCM,
    version: int | str,
    context: str,
    plaintext: bytes,
    nonce: bytes | None = None,
) -> str:
    """Encrypt ``plaintext`` into a token. ``nonce`` is for test vectors only.

    ``version`` may be given as its precomputed header (``"kt1:3:"``), as the
    keyring does on its hot path.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    elif len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    prefix = version if isinstance(version, str) else header(version)
    blob = nonce + aead.encrypt(nonce, plaintext, (prefix + context).encode())
    encoded = binascii.b2a_base64(blob, newline=False).translate(TO_URLSAFE)
    return prefix + encoded.rstrip(b"=").decode("ascii")


def parse(token: str) -> tuple[int, bytes]:
    """Split a token into (version, nonce||ciphertext||tag), strictly.

    Raises InvalidToken for anything that is not a canonical kt1 token.
    """
    if not isinstance(token, str):
        raise InvalidToken()
    parts = token.split(":", 2)
    if len(parts) != 3 or parts[0] != MAGIC:
        raise InvalidToken()
    return _parse_version(parts[1]), decode_payload(parts[2])


def open_blob(aead: AESGCM, version: int, blob: bytes, context: str) -> bytes:
    """Authenticate and decrypt a parsed token's blob."""
    return open_with_aad(aead, blob, aad(version, context))


def open_with_aad(aead: AESGCM, blob: bytes, associated: bytes) -> bytes:
    """Authenticate and decrypt ``blob`` given its full AAD."""
    try:
        return aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], associated)
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


def decode_payload(text: str) -> bytes:
    """Strictly decode a token's payload: canonical unpadded base64url, >= 28 bytes."""
    rem = len(text) % 4
    if rem and text[-1] not in CLEAN_ENDS[rem]:
        raise InvalidToken()
    try:
        raw = text.encode("ascii").translate(TO_STANDARD) + PADDING[rem]
        blob = binascii.a2b_base64(raw, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidToken() from None
    if len(blob) < OVERHEAD:
        raise InvalidToken()
    return blob
