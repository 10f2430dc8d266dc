"""Envelope keyring maths: data keys, their metadata, and token dispatch. Pure.

A keyring is a set of versioned 256-bit data keys (DEKs), exactly one of them
active for encryption. DEKs are stored wrapped under the KEK with an AAD that
binds each to its version and to this keyring's id, so a wrapped DEK copied to
another version slot, or to another database's keyring, fails to unwrap.
"""

from __future__ import annotations

import binascii
import os
from binascii import a2b_base64
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn._core import tokens
from keyturn.errors import InvalidToken, UnknownKeyVersion

DEK_BYTES = 32
# active: encrypts and decrypts (exactly one). draining: a former active
# version that values or backups still use; decrypts only. retired: no longer
# used by anything; still decrypts until destroyed. destroyed: key erased.
ACTIVE, DRAINING, RETIRED, DESTROYED = "active", "draining", "retired", "destroyed"
STATES = (ACTIVE, DRAINING, RETIRED, DESTROYED)


@dataclass(frozen=True)
class KeyVersion:
    """One row of ``keyturn_keys``, without the wrapped key."""

    version: int
    state: str
    created_at: datetime
    retired_at: datetime | None
    created_by: str
    kek_id: str | None


@dataclass(frozen=True)
class DataKey:
    """An unwrapped DEK. Its repr never shows the key."""

    version: int
    key: bytes = field(repr=False)
    aead: AESGCM = field(init=False, repr=False, compare=False)
    header: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != DEK_BYTES:
            raise ValueError("a data key is 32 bytes")
        object.__setattr__(self, "aead", AESGCM(self.key))
        object.__setattr__(self, "header", tokens.header(self.version))

    def __repr__(self) -> str:
        return f"DataKey(version={self.version}, key=<redacted>)"

    @classmethod
    def generate(cls, version: int) -> DataKey:
        return cls(version, os.urandom(DEK_BYTES))


def wrap_aad(keyring_id: str, version: int) -> bytes:
    """AAD binding a wrapped DEK to its version and keyring."""
    return f"keyturn-dek:v1:{keyring_id}:{version}".encode()


class Resealed(list[str | None]):
    """:meth:`Keyring.reencrypt_many`'s tokens for one context, with, if asked for,
    what it decoded on the way: the bytes the body of each token that opened
    spelled (``opened``, in order) and, if every token opened and under one
    version, that version's text (``version``). A backup keeps the bytes instead
    of decoding the tokens again."""

    __slots__ = ("opened", "version")

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[bytes] = []
        self.version: str | None = None

    def picked(self, rows: Sequence[int]) -> Resealed:
        """The tokens at positions ``rows``, with what they decoded to if kept."""
        out = Resealed()
        out.extend([self[j] for j in rows])
        if self.version is not None:  # every token opened: opened[j] is token j's
            out.opened = [self.opened[j] for j in rows]
            out.version = self.version
        return out


class Keyring:
    """Unwrapped DEKs by version, with the active one used for encryption."""

    __slots__ = ("_active", "_by_text", "_destroyed", "_keys")

    def __init__(
        self,
        keys: Mapping[int, DataKey],
        active: int,
        destroyed: frozenset[int] = frozenset(),
    ) -> None:
        if active not in keys:
            raise ValueError("the active version must be among the keys")
        self._keys = dict(keys)
        # Keyed by the canonical decimal text, so a token's header is looked up
        # without parsing; a miss falls back to the strict parser.
        self._by_text = {str(v): k for v, k in keys.items()}
        self._active = keys[active]
        self._destroyed = destroyed

    def __repr__(self) -> str:
        return f"Keyring(versions={sorted(self._keys)}, active={self._active.version})"

    @property
    def active_version(self) -> int:
        return self._active.version

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self._keys)

    def with_active(self, key: DataKey) -> Keyring:
        """A copy of this keyring with ``key`` added as the active version."""
        return Keyring({**self._keys, key.version: key}, key.version, self._destroyed)

    def encrypt(self, plaintext: bytes, context: str, nonce: bytes | None = None) -> str:
        key = self._active
        return tokens.seal(key.aead, key.header, context, plaintext, nonce)

    def encrypt_many(self, plaintexts: Sequence[bytes], contexts: Sequence[str] | str) -> list[str]:
        """:meth:`encrypt` of each plaintext for its context (one text: the same for
        all), with one nonce draw and one AAD per context for the whole batch
        (``encrypt-existing``'s hot path)."""
        key = self._active
        header = key.header
        seal = key.aead.encrypt
        to_urlsafe = tokens.TO_URLSAFE
        nonces = os.urandom(_NONCE * len(plaintexts))
        out: list[str] = []
        append = out.append
        end = 0
        aads: Iterable[bytes]
        if isinstance(contexts, str):
            aads = repeat((header + contexts).encode(), len(plaintexts))
        else:
            by_context = {c: (header + c).encode() for c in set(contexts)}
            aads = map(by_context.__getitem__, contexts)
        for plaintext, aad in zip(plaintexts, aads, strict=True):
            start, end = end, end + _NONCE
            nonce = nonces[start:end]
            blob = nonce + seal(nonce, plaintext, aad)
            encoded = _b2a_base64(blob, newline=False).translate(to_urlsafe)
            append(header + encoded.rstrip(b"=").decode("ascii"))
        return out

    def reencrypt_many(
        self,
        tokens_: Sequence[str],
        contexts: Sequence[str] | str,
        leave: int | None = None,
        opened: bool = False,
    ) -> list[str | None]:
        """Decrypt each token and seal its plaintext under the active version, with
        one nonce draw for the whole batch; the plaintexts never leave here.
        ``contexts``: each token's, or one text for all (a column bound as a whole:
        then a :class:`Resealed`, which with ``opened`` keeps what they decoded to).

        None stands for a value left as it is: a token on version ``leave``
        (already rotated), or anything that does not decrypt (:meth:`decrypt` on
        it raises the reason). The rotation loop spends most of its time here.
        """
        if isinstance(contexts, str):
            return self._reencrypt_for(tokens_, contexts, leave, opened)
        key = self._active
        left = self._keys.get(leave) if leave is not None else None
        header = key.header
        seal = key.aead.encrypt
        by_text = self._by_text
        step, magic, to_urlsafe, b2a = _NONCE, tokens.MAGIC, tokens.TO_URLSAFE, _b2a_base64
        nonces = os.urandom(step * len(tokens_))
        # (version, context) -> the AADs to open and to seal with: a batch has
        # few versions and, usually, one context (the last ones are reused as is,
        # found by the header's version text).
        aads: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        last: tuple[str | None, str | None, DataKey, tuple[bytes, bytes]]
        last = (None, None, key, (b"", b""))  # no version text is None: never matched
        old: DataKey | None
        out: list[str | None] = []
        append = out.append
        end = 0
        for token, context in zip(tokens_, contexts, strict=True):
            start, end = end, end + step
            try:
                head, version, payload = token.split(":", 2)
            except (AttributeError, TypeError, ValueError):  # not text, or no header
                append(None)
                continue
            if version == last[0] and context is last[1] and head == magic:
                old, pair = last[2], last[3]
            else:
                old = by_text.get(version)
                if old is None or old is left or head != magic:
                    append(None)
                    continue
                found = aads.get((old.version, context))
                if found is None:
                    found = (old.header + context).encode(), (header + context).encode()
                    aads[old.version, context] = found
                pair = found
                last = (version, context, old, pair)
            try:
                plaintext = _open(old, payload, pair[0])
            except InvalidToken:
                append(None)
                continue
            nonce = nonces[start:end]
            blob = nonce + seal(nonce, plaintext, pair[1])
            append(header + b2a(blob, newline=False).translate(to_urlsafe).rstrip(b"=").decode())
        return out

    def _reencrypt_for(
        self, tokens_: Sequence[str], context: str, leave: int | None, opened: bool
    ) -> Resealed:
        """:meth:`reencrypt_many` for one context, the rotation's usual batch
        (:meth:`_opened`: 0.15-0.2 us a token less, docs/PERFORMANCE.md)."""
        key = self._active
        header = key.header
        seal = key.aead.encrypt
        sealed_aad = (header + context).encode()
        step, to_urlsafe, b2a = _NONCE, tokens.TO_URLSAFE, _b2a_base64
        nonces = os.urandom(step * len(tokens_))
        out = Resealed()
        append = out.append
        end = 0
        for plaintext in self._opened(tokens_, context, leave, out if opened else None):
            start, end = end, end + step
            if plaintext is None:
                append(None)
                continue
            nonce = nonces[start:end]
            blob = nonce + seal(nonce, plaintext, sealed_aad)
            append(header + b2a(blob, newline=False).translate(to_urlsafe).rstrip(b"=").decode())
        return out

    def opens(self, tokens_: Sequence[object], context: str) -> list[bool]:
        """Whether each token opens for ``context`` (``verify``'s hot path: no
        plaintext kept); False for a value that is not text, as
        :meth:`reencrypt_many` leaves it."""
        return [plaintext is not None for plaintext in self._opened(tokens_, context)]

    def _opened(
        self,
        tokens_: Sequence[object],
        context: str,
        leave: int | None = None,
        kept: Resealed | None = None,
    ) -> Iterator[bytes | None]:
        """Each token's plaintext under ``context``; None for a token on version
        ``leave`` and for anything :meth:`decrypt` refuses. The batch paths' loop:
        :func:`_open`'s checks written out, each token split once and its header
        looked up only where it changes, and the strict decoder's check made one of length
        (below; docs/PERFORMANCE.md). ``kept`` gets the bytes of each token that
        opened and, if they all share it, their version."""
        left = self._keys.get(leave) if leave is not None else None
        # "kt1:<version>", as rpartition leaves it: that key's opener and AAD.
        heads = {
            f"{tokens.MAGIC}:{text}": (key.aead.decrypt, aad)
            for text, (key, aad) in self._opening(context).items()
            if key is not left
        }
        ends, to_standard, padding, a2b = _CLEAN_ENDS, _TO_STANDARD, _PADS, a2b_base64
        last: str | None = None  # the header looked up last (none yet)
        decrypt, aad = self._active.aead.decrypt, b""
        keep = kept.opened.append if kept is not None else None
        versions: set[str] = set()
        for token in tokens_:
            plaintext = None
            try:
                head, _, payload = token.rpartition(":")  # type: ignore[attr-defined]
                if head != last:  # looked up only where the header changes
                    entry = heads.get(head)  # a payload holding ":" leaves no known head
                    if entry is None:  # another version, or no header: nothing to open
                        payload = ""
                    else:
                        decrypt, aad = entry
                        last = head
                        versions.add(head)
                size = len(payload)
                if size and payload[-1] in ends[size & 3]:
                    # The lax decoder skips what is not base64 (a "!" from
                    # to_standard, a non-ASCII byte) and so returns fewer bytes
                    # than the length promises: as strict as strict_mode, cheaper.
                    blob = a2b(payload.encode().translate(to_standard) + padding[size & 3])
                    if len(blob) == (size * 3) >> 2:
                        plaintext = decrypt(blob[:12], blob[12:], aad)
                        if keep is not None:
                            keep(blob)
            except (AttributeError, TypeError, ValueError, InvalidTag):
                pass  # not text, not base64, too short, or forged
            yield plaintext
        if kept is not None and len(versions) == 1 and len(kept.opened) == len(tokens_):
            kept.version = versions.pop()[len(tokens.MAGIC) + 1 :]

    def _opening(self, context: str) -> dict[str, tuple[DataKey, bytes]]:
        """Each held version's header text -> its key and its AAD for ``context``."""
        return {text: (key, (key.header + context).encode()) for text, key in self._by_text.items()}

    def opener(self, context: str) -> Callable[[str], bytes]:
        """:meth:`decrypt` for one fixed context, each version's AAD built once: for
        opening many values of one column (an ORM load)."""
        entries = self._opening(context)

        def open_(token: str) -> bytes:
            parts = token.split(":", 2)
            entry = entries.get(parts[1]) if len(parts) == 3 and parts[0] == tokens.MAGIC else None
            if entry is None:
                return self.decrypt(token, context)  # the error it deserves
            return _open(entry[0], parts[2], entry[1])

        return open_

    def decrypt(self, token: str, context: str) -> bytes:
        """Decrypt a token; UnknownKeyVersion if its version is not held."""
        parts = token.split(":", 2) if isinstance(token, str) else ()
        key = self._by_text.get(parts[1]) if len(parts) == 3 else None
        if key is None or parts[0] != tokens.MAGIC:
            version, _ = tokens.parse(token)  # InvalidToken if malformed
            detail = "it was destroyed" if version in self._destroyed else ""
            raise UnknownKeyVersion(version, detail)
        return _open(key, parts[2], (key.header + context).encode())


# The hot paths' constants, bound once (a module attribute lookup per value shows).
_NONCE, _OVERHEAD = tokens.NONCE_LEN, tokens.OVERHEAD
_CLEAN_ENDS, _TO_STANDARD, _PADDING = tokens.CLEAN_ENDS, tokens.TO_STANDARD, tokens.PADDING
_PADS = (b"", b"", _PADDING[2], _PADDING[3])  # by length mod 4, as _CLEAN_ENDS
_b2a_base64 = binascii.b2a_base64


def _open(key: DataKey, payload: str, aad: bytes) -> bytes:
    """Decrypt a token's payload (what follows its header) under ``key``:
    ``tokens.decode_payload`` and ``tokens.open_with_aad`` in one, as this is the
    hot path of every read and of rotation (bench/crypto_overhead.py)."""
    rem = len(payload) % 4
    if rem and payload[-1] not in _CLEAN_ENDS[rem]:
        raise InvalidToken()
    try:
        blob = a2b_base64(
            payload.encode("ascii").translate(_TO_STANDARD) + _PADDING[rem], strict_mode=True
        )
        if len(blob) < _OVERHEAD:
            raise InvalidToken()
        return key.aead.decrypt(blob[:12], blob[12:], aad)
    except (UnicodeEncodeError, binascii.Error, InvalidTag):
        raise InvalidToken() from None
