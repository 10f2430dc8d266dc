"""Telling another scheme's ciphertext from plaintext by its shape alone.

A value that is not a kt1 token and that no configured legacy reader
recognises is either plaintext or ciphertext keyturn cannot read. Sealing the
latter as if it were plaintext buries it (the app would read back its old
ciphertext), so values shaped like ciphertext are ``unknown``: reported, never
sealed without an explicit flag. The rules (docs/ADOPTING.md, "Unknown values"):

- bytes that are not UTF-8 text, at least 16 of them;
- a Fernet token (``gAAAAA…``, a Fernet token's length);
- one hex blob of at least 56 digits (28 bytes: a 12-byte IV and a 16-byte tag),
  or one base64 blob of at least 44 characters (32 bytes) mixing upper case,
  lower case and digits, not led by a lower-case word and ``_``/``-`` (``sk_live_``,
  ``ghp_``, ``xoxb-``), with random-looking characters (entropy per character
  at least 3.0 bits for hex, 4.5 for base64, as secret scanners measure it);
- such a blob after a short label and ``.``, ``:``, ``$`` or ``|`` (``h1.…``);
- parts joined by ``:`` or ``$`` (``iv:ciphertext``, ``enc:v1:…``): short labels
  and blobs, the blobs together at least 28 bytes.

Random keys written as hex or base64 (``openssl rand -hex 32``) match too: they
are sealed only when the operator says they are plaintext.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

# Every character any rule below allows: text with another (whitespace, most
# punctuation) is plaintext.
_ALPHABET = re.compile(r"[A-Za-z0-9+/=_.:$|-]*")
_DIGIT = re.compile(r"[0-9]")
_HEX = re.compile(r"(?:[0-9a-f]{2})+|(?:[0-9A-F]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")
_LABEL = re.compile(r"[A-Za-z0-9]{1,8}")
_LABEL_PREFIX = re.compile(r"[A-Za-z0-9]{1,8}[.:$|]")
_WORD_PREFIX = re.compile(r"[a-z]{2,10}[_-]")
_WORD_LED_LINES = re.compile(r"(?:[a-z]{2,10}[_-][^\n]*\n)*[a-z]{2,10}[_-][^\n]*")
_FERNET = re.compile(r"gAAAAA[A-Za-z0-9_-]{94,}={0,2}")
_SEPARATORS = (":", "$")

MIN_BINARY = 16
MIN_HEX = 56
MIN_BASE64 = 44
MIN_PARTS_BYTES = 28
# The shortest text any rule can match: two base64 parts of 12 and 16 bytes (16 and
# 22 characters) and their separator. Most plaintext is shorter: decided at once.
_SHORTEST = 39


def short_texts(values: Sequence[object]) -> bool:
    """Whether every value is non-empty text shorter than any rule here can match, so
    that :func:`looks_encrypted` is False for each: a batch checked at once."""
    if not values:
        return True
    if set(map(type, values)) != {str}:
        return False
    lengths = list(map(len, values))  # type: ignore[arg-type]  # all str
    return min(lengths) > 0 and max(lengths) < _SHORTEST


def api_keys(texts: Sequence[str], joined: str) -> bool:
    """Whether every one of ``texts`` (``joined``: them joined by newlines) is led by a
    lower-case word and ``_`` or ``-`` and none holds ``:`` or ``$``, so that
    :func:`looks_encrypted` is False for each (``sk_live_…``, ``ghp_…``): a batch
    of API keys checked at once (docs/PERFORMANCE.md)."""
    if not texts or ":" in joined or "$" in joined:
        return False
    # Every text sorts between the least and the greatest: if both start with one
    # word-led prefix, so does each (the usual batch of one kind of key).
    least, greatest = min(texts), max(texts)
    prefix = _WORD_PREFIX.match(least)
    if prefix is not None and greatest.startswith(prefix.group()):
        return True
    return _WORD_LED_LINES.fullmatch(joined) is not None


def looks_encrypted(value: str | bytes) -> bool:
    """Whether ``value`` (not a kt1 token, recognised by no reader) is shaped like
    another scheme's ciphertext rather than plaintext."""
    if not isinstance(value, str):  # bytes or bytearray
        try:
            value = bytes(value).decode()
        except UnicodeDecodeError:
            return len(value) >= MIN_BINARY
    if len(value) < _SHORTEST:
        return False
    if _WORD_PREFIX.match(value) and ":" not in value and "$" not in value:
        return False  # an API key (sk_live_…, ghp_…): no rule matches it without parts
    if not _ALPHABET.fullmatch(value):
        return False
    if value.count(".") + value.count("|") > 1:
        return False  # only a label's one separator may be either (a JWT has two dots)
    if _FERNET.fullmatch(value) and (_base64_bytes(value) - 57) % 16 == 0:
        return True
    if _blob(value):
        return True
    label = _LABEL_PREFIX.match(value)
    if label and _blob(value[label.end() :]):
        return True
    for separator in _SEPARATORS:
        if separator in value:
            return _parts(value.split(separator))
    return False


def _blob(text: str) -> bool:
    """One hex or base64 blob long and random enough to be ciphertext."""
    if len(text) >= MIN_HEX and _HEX.fullmatch(text):
        return _entropy(text) >= 3.0
    if len(text) < MIN_BASE64 or not _BASE64.fullmatch(text) or _WORD_PREFIX.match(text):
        return False
    # Upper case, lower case and digits (the text is ASCII: it matched _BASE64).
    mixed = text.lower() != text and text.upper() != text and _DIGIT.search(text) is not None
    return mixed and _entropy(text.rstrip("=")) >= 4.5


def _parts(parts: list[str]) -> bool:
    """``iv:ct``-like: 2 to 6 parts, each a short label or an encoded blob, the blobs
    at least 28 bytes together, one of them at least 12 (an IV or a nonce)."""
    if not 2 <= len(parts) <= 6:
        return False
    sizes = []
    for part in parts:
        if _HEX.fullmatch(part) and len(part) >= 24:
            sizes.append(len(part) // 2)
        elif _BASE64.fullmatch(part) and len(part) >= 16:
            sizes.append(_base64_bytes(part))
        elif not _LABEL.fullmatch(part):
            return False
    return bool(sizes) and max(sizes) >= 12 and sum(sizes) >= MIN_PARTS_BYTES


def _base64_bytes(text: str) -> int:
    return len(text.rstrip("=")) * 3 // 4


def _entropy(text: str) -> float:
    """Shannon entropy of ``text``'s characters, in bits per character."""
    n = len(text)
    return -sum(k / n * math.log2(k / n) for k in Counter(text).values())
