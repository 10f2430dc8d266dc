"""The packed backup format: the values one batch replaced in one column, as one blob.

A rotation keeps each value it replaced (to put it back) and a fingerprint of
the value it wrote (so that a restore touches only rows that still hold it).
Packing a batch into one blob, with kt1 tokens kept as the bytes their base64
spells, makes a backup smaller than the tokens it keeps and costs one insert
per batch instead of one per value (docs/FORMAT.md, "Backups")::

    pack    := b"ktb1" u32 len(header) header  u32 len(keys) keys
               u32 len(values) values  fingerprints
    header  := zlib(JSON {"pks", "form", "length" | "lengths"[, "version" | "versions"]})
               (form "opened": {"pks", "form", "version", "size" | "sizes"})
    keys    := zlib(one integer column's keys as signed 64-bit little-endian,
               or else JSON: a list of each row's key as a list)
    values  := form "tokens": every token without its two colons ("kt1", the
               version, the body: all base64url characters), each filled with
               "A" to a multiple of 4 characters, decoded as one;
               form "opened": kt1 tokens of one version, the bytes each body
               spells, joined (what the re-encryption decoded anyway);
               form "text" or "bytes": the values joined (UTF-8)
    fingerprints := FINGERPRINT characters per value (see :func:`fingerprint`),
               column by column (see :func:`fingerprints`)

``length(s)`` is each value's length (a token's, in characters; text in
characters; bytes in bytes), ``size(s)`` each body's in bytes, ``version(s)``
each token's version text (one for all, or one per token).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import struct
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add
from typing import Any

from keyturn._core import tokens
from keyturn.errors import KeyturnError

MAGIC = b"ktb1"
#: Characters of a fingerprint: a token's last 11 (66 bits of its GCM tag), or
#: the first 11 base64url characters of a 9-byte BLAKE2b digest of any other
#: value (:func:`fingerprint`).
FINGERPRINT = 11
_DIGEST = 9  # bytes: 12 base64 characters, of which a fingerprint keeps 11
_HEAD = struct.Struct(">4sI")
_SIZE = struct.Struct(">I")
_LINE_HEADER = re.compile(r"(?:^|(?<=\n))kt1:([0-9]+):")
_QUOTED_HEADER = re.compile(r'"kt1:([0-9]+):')
_FILL = ("", "AAA", "AA", "A")  # to a whole base64 quad, by length % 4
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


class CorruptPack(KeyturnError):
    """A stored backup pack that does not parse (edited by hand, truncated)."""


@dataclass(frozen=True)
class Pack:
    """One pack's rows: primary keys (None where unreadable), the values replaced
    and the fingerprints of the values written, in the same order."""

    pks: list[list[Any] | None]
    olds: list[Any]
    fingerprints: list[str]

    def __repr__(self) -> str:  # the values are ciphertexts, but keep them out of logs
        return f"Pack({len(self.olds)} values)"


def fingerprint(value: Any) -> str:
    """What identifies a written value: a kt1 token's tail (random: part of its GCM
    tag), else a BLAKE2b digest. Restore compares it, then swaps on the whole value."""
    if isinstance(value, bytes | bytearray | memoryview):  # a binary column's value
        raw = bytes(value)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            value = None
    else:
        raw = b""
    if isinstance(value, str):
        if value.startswith("kt1:") and len(value) >= FINGERPRINT:
            return value[-FINGERPRINT:]
        raw = value.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(raw, digest_size=_DIGEST).digest()
    text = binascii.b2a_base64(digest, newline=False).translate(tokens.TO_URLSAFE)
    return text[:FINGERPRINT].decode()


def fingerprints(news: Sequence[Any]) -> str:
    """Every value's :func:`fingerprint`, stored column by column: the first
    character of each, then the second... (row ``k``'s is ``result[k::len(news)]``),
    so tokens of one length are fingerprinted by slicing one string."""
    n = len(news)
    try:
        joined = "".join(news)
    except TypeError:
        joined = ""
    size = len(news[0]) if n else 0
    if (
        size >= FINGERPRINT
        and len(joined) == n * size
        and set(map(len, news)) == {size}
        and _each_starts(joined, size, "kt1:", n)
    ):
        return "".join([joined[size - FINGERPRINT + j :: size] for j in range(FINGERPRINT)])
    if n and joined and "\nkt1:" not in "\n" + "\n".join(news):
        # Text, no token (JSON documents): digests in one list, sliced as above.
        blake2b = hashlib.blake2b
        digests = [
            blake2b(v.encode("utf-8", "surrogatepass"), digest_size=_DIGEST).digest() for v in news
        ]
        text = binascii.b2a_base64(b"".join(digests), newline=False).translate(tokens.TO_URLSAFE)
        step = _DIGEST * 4 // 3
        return "".join([text[j::step].decode() for j in range(FINGERPRINT)])
    return "".join(map("".join, zip(*map(fingerprint, news), strict=True)))


def _each_starts(joined: str, step: int, prefix: str, n: int) -> bool:
    """Whether each of the ``n`` values, ``step`` characters apart in ``joined``,
    starts with ``prefix``: one strided slice per character, no loop per value."""
    return all(joined[i::step] == c * n for i, c in enumerate(prefix))


def versions_text(used: Counter[int]) -> str:
    """A pack's token counts per key version as stored beside it (JSON)."""
    return _json({str(v): n for v, n in sorted(used.items())})


def pack(
    pks: Sequence[Sequence[Any]],
    olds: Sequence[Any],
    news: Sequence[Any],
    keys: tuple[str, bytes] | None = None,
    opened: tuple[str, Sequence[bytes]] | None = None,
) -> tuple[bytes, Counter[int]]:
    """One blob holding the replaced values ``olds`` of the rows ``pks`` and the
    fingerprints of ``news``, the values written over them; and how many tokens
    of each key version ``olds`` hold (:func:`versions_used`). ``keys`` is
    :func:`pack_keys` of ``pks`` if the caller has it already; ``opened``, where
    every old value is a token of one version, that version's text and the
    bytes each token's body spells (as ``Keyring.reencrypt_many`` decoded them)."""
    if not len(pks) == len(olds) == len(news):
        raise ValueError("pks, olds and news differ in length")
    form, packed_keys = keys or pack_keys(pks)
    header: dict[str, Any] = {"pks": form}
    values: bytes | None
    if opened is not None:
        values = _pack_opened(*opened, header, len(olds))
    else:
        values = _pack_tokens(olds, header) if olds else None
    if values is None:
        values = _pack_other(olds, header)
        used = versions_used(olds)
    elif "version" in header:
        used = _by_version(Counter({header["version"]: len(olds)}))
    else:
        used = _by_version(Counter(header["versions"]))
    prints = fingerprints(news).encode("ascii")
    head = zlib.compress(_json(header).encode(), 1)
    parts = (_HEAD.pack(MAGIC, len(head)), head, _SIZE.pack(len(packed_keys)), packed_keys)
    return b"".join((*parts, _SIZE.pack(len(values)), values, prints)), used


def pack_keys(pks: Sequence[Sequence[Any]]) -> tuple[str, bytes]:
    """Primary keys of one integer column as 64-bit integers ("int64"), others as
    JSON ("json"); zlib'd. (Columns of one batch share it.)"""
    if pks and set(map(len, pks)) == {1}:
        try:
            ints = array("q", [pk[0] for pk in pks])
        except (TypeError, OverflowError):
            pass
        else:
            if ints.itemsize == 8:
                if sys.byteorder == "big":
                    ints.byteswap()
                return "int64", zlib.compress(ints.tobytes(), 1)
    return "json", zlib.compress(_json([list(pk) for pk in pks]).encode(), 1)


def _pack_opened(version: str, bodies: Sequence[bytes], header: dict[str, Any], n: int) -> bytes:
    """The "opened" form: tokens of one version, already decoded, joined as they are."""
    if len(bodies) != n or not version.isdigit():
        raise ValueError("opened bodies do not match the values")
    size = len(bodies[0]) if n else 0
    joined = b"".join(bodies)
    if set(map(len, bodies)) == {size}:
        header.update(form="opened", version=version, size=size)
    else:
        header.update(form="opened", version=version, sizes=list(map(len, bodies)))
    return joined


def _pack_tokens(olds: Sequence[Any], header: dict[str, Any]) -> bytes | None:
    """The tokens, their two colons taken out, decoded as base64url; None unless
    every value is a kt1 token that comes back from that character for character."""
    n = len(olds)
    first = olds[0]
    if type(first) is str:
        head = first[: first.find(":", 4) + 1]
        size = len(first)
        try:
            one_length = set(map(len, olds)) == {size}
        except TypeError:  # a value with no length: not every value is a token
            return None
        if one_length and head.startswith("kt1:") and head[4:-1].isdigit():
            # One version, one length (the common case): checked and filled by the
            # string, with no work per token.
            raw = _one_version(olds, head, size)
            if raw is not None:
                header.update(form="tokens", version=head[4:-1], length=size)
                return raw
    try:
        joined = "".join(olds)
    except TypeError:
        return None
    # "+" and "/" would come back as "-" and "_"; a colon past the header would be lost.
    if "+" in joined or "/" in joined or joined.count(":") != 2 * n:
        return None
    parts = [v.split(":", 2) for v in olds]
    if not all(len(p) == 3 and p[0] == "kt1" and p[1].isdigit() for p in parts):
        return None
    lengths = list(map(len, olds))
    fills = map(_FILL.__getitem__, map((3).__and__, map((2).__rsub__, lengths)))
    raw = _decoded("".join(map(add, olds, fills)))
    if raw is not None:
        header.update(form="tokens", versions=[p[1] for p in parts], lengths=lengths)
    return raw


#: Characters of tokens decoded at a time by :func:`_one_version`: each step's few
#: buffers stay in the processor's cache. Decoding a batch of 20,000 whole (1.7 MB
#: a buffer) took 0.41 us a token against 0.30 (docs/PERFORMANCE.md).
_CHUNK = 64_000


def _one_version(olds: Sequence[str], head: str, size: int) -> bytes | None:
    """:func:`_pack_tokens` of tokens all ``size`` characters long: None unless
    each starts with ``head`` and holds no other colon, "+" or "/"."""
    fill = _FILL[(size - 2) & 3]
    step = size + len(fill)
    per = max(1, _CHUNK // step)
    out = []
    for lo in range(0, len(olds), per):
        part = olds[lo : lo + per]
        try:
            text = fill.join(part) + fill
        except TypeError:  # bytes of that length among them
            return None
        k = len(part)
        if "+" in text or "/" in text or text.count(":") != 2 * k:
            return None
        raw = _decoded(text) if _each_starts(text, step, head, k) else None
        if raw is None:
            return None
        out.append(raw)
    return b"".join(out)


def _decoded(text: str) -> bytes | None:
    """Tokens (each filled to whole quads once its colons are out) as bytes; None if
    what is left is not base64url."""
    try:
        colons_out = text.encode("ascii").translate(_TO_STANDARD, b":")
        return binascii.a2b_base64(colons_out, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _pack_other(olds: Sequence[Any], header: dict[str, Any]) -> bytes:
    """Text as text; a pack holding any bytes (a binary column's) as bytes, its
    text UTF-8 encoded."""
    if all(isinstance(v, str) for v in olds):
        header.update(form="text", lengths=list(map(len, olds)))
        return "".join(olds).encode("utf-8", "surrogatepass")
    raw = [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass") for v in olds]
    header.update(form="bytes", lengths=list(map(len, raw)))
    return b"".join(raw)


def unpack(data: bytes) -> Pack:
    """A pack's rows; CorruptPack if ``data`` is not one."""
    try:
        magic, size = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptPack("not a keyturn backup pack")
        at = _HEAD.size + size
        header = json.loads(zlib.decompress(data[_HEAD.size : at]))
        keys, at = _part(data, at)
        values, at = _part(data, at)
        prints = data[at:].decode("ascii")
        pks = _unpack_pks(header, zlib.decompress(keys))
        olds = _unpack_values(header, values, len(pks))
    except CorruptPack:
        raise
    except (ValueError, TypeError, KeyError, struct.error, zlib.error, UnicodeDecodeError):
        raise CorruptPack("a backup pack does not parse") from None
    if len(olds) != len(pks) or len(prints) != FINGERPRINT * len(pks):
        raise CorruptPack("a backup pack's parts disagree in length")
    n = len(pks)
    return Pack(pks, olds, [prints[k::n] for k in range(n)])


def _part(data: bytes, at: int) -> tuple[bytes, int]:
    (size,) = _SIZE.unpack_from(data, at)
    start = at + _SIZE.size
    if start + size > len(data):
        raise ValueError("truncated")
    return data[start : start + size], start + size


def _unpack_pks(header: dict[str, Any], keys: bytes) -> list[list[Any] | None]:
    if header["pks"] == "int64":
        ints = array("q")
        ints.frombytes(keys)
        if sys.byteorder == "big":
            ints.byteswap()
        return [[k] for k in ints]
    if header["pks"] != "json":
        raise ValueError("unknown key form")
    return [pk if isinstance(pk, list) and pk else None for pk in json.loads(keys)]


def _unpack_values(header: dict[str, Any], values: bytes, n: int) -> list[Any]:
    form = header["form"]
    if form == "opened":
        return _unpack_opened(header, values, n)
    lengths = header["lengths"] if "lengths" in header else [int(header["length"])] * n
    if form == "tokens":
        versions = header["versions"] if "versions" in header else [header["version"]] * n
        text = binascii.b2a_base64(values, newline=False).translate(tokens.TO_URLSAFE).decode()
        out, at = [], 0
        for version, length in zip(versions, lengths, strict=True):
            if not (isinstance(version, str) and version.isdigit()):
                raise ValueError("a token's version is not a number")
            start = at + 3 + len(version)  # past "kt1" and the version
            out.append(f"kt1:{version}:" + text[start : at + length - 2])
            at += (length - 2 + 3) & ~3
        if at != len(text):
            raise ValueError("token bodies and lengths disagree")
        return out
    if form not in ("text", "bytes"):
        raise ValueError("unknown form")
    joined: Any = values
    if form == "text":
        joined = joined.decode("utf-8", "surrogatepass")
    out, at = [], 0
    for length in lengths:
        out.append(joined[at : at + length])
        at += length
    if at != len(joined):
        raise ValueError("values and lengths disagree")
    return out


def _unpack_opened(header: dict[str, Any], values: bytes, n: int) -> list[str]:
    """Tokens of the "opened" form: each body's bytes spelled again in base64url."""
    version = header["version"]
    if not (isinstance(version, str) and version.isdigit()):
        raise ValueError("a token's version is not a number")
    sizes = header["sizes"] if "sizes" in header else [int(header["size"])] * n
    head, b2a, to_urlsafe = f"kt1:{version}:", binascii.b2a_base64, tokens.TO_URLSAFE
    out, at = [], 0
    for size in sizes:
        if not (isinstance(size, int) and size > 0):
            raise ValueError("a token's size is not a count")
        body = b2a(values[at : at + size], newline=False).translate(to_urlsafe)
        out.append(head + body.rstrip(b"=").decode())
        at += size
    if at != len(values):
        raise ValueError("token bodies and sizes disagree")
    return out


def versions_used(olds: Sequence[Any]) -> Counter[int]:
    """How many tokens of each key version the values hold: tokens themselves, and
    token strings inside JSON documents."""
    counts: Counter[int] = Counter()
    try:
        joined = "\n" + "\n".join(olds)
    except TypeError:
        olds = [v if isinstance(v, str) else bytes(v).decode("utf-8", "replace") for v in olds]
        joined = "\n" + "\n".join(olds)
    if joined.count("\n") == len(olds):
        counts.update(_headers(joined, "\n", _LINE_HEADER))
    else:  # a value spans lines: only its own start counts
        starts = Counter(m[1] for v in olds if (m := _LINE_HEADER.match(v)))
        counts.update(_by_version(starts))
    counts.update(_headers(joined, '"', _QUOTED_HEADER))
    return counts


def _headers(text: str, before: str, pattern: re.Pattern[str]) -> Counter[int]:
    """Tokens by version among the headers ``before + "kt1:V:"`` in ``text``: counted
    by ``str.count`` when they all name the first one's version (no regex scan)."""
    total = text.count(before + "kt1:")
    if not total:
        return Counter()
    first = pattern.search(text)
    if first is not None and text.count(f"{before}kt1:{first[1]}:") == total:
        return _by_version(Counter({first[1]: total}))
    return _by_version(Counter(pattern.findall(text)))


def _by_version(found: Counter[str]) -> Counter[int]:
    """Counts by version text as counts by version (odd spellings are not tokens)."""
    counts: Counter[int] = Counter()
    for text, n in found.items():
        version = tokens.version_of(f"kt1:{text}:x")
        if version is not None:
            counts[version] += n
    return counts
