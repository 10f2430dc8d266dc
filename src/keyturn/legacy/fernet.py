"""``format = "fernet"``: Fernet tokens (cryptography's, and every port of it), keys
tried in order as a MultiFernet: given as Fernet keys, or derived from an app
secret as the Python field libraries do (``kdf``: SHA-256 as sqlalchemy-utils'
FernetEngine, HKDF as django-fernet-fields, PBKDF2 with one or more salts as
django-fernet-encrypted-fields)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from cryptography.fernet import InvalidToken as FernetInvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from keyturn.errors import ConfigError, InvalidToken, LegacyKeyError
from keyturn.legacy.base import LegacySpec, decode

KDFS = ("raw", "sha256", "hkdf", "pbkdf2")


class FernetFormat:
    """The ``fernet`` legacy format."""

    name = "fernet"
    options = frozenset({"kdf", "salt", "salts", "info", "iterations"})

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        if spec.kdf not in KDFS:
            raise ConfigError(f"{where}: `kdf` must be one of {', '.join(KDFS)} for format fernet")
        if spec.kdf == "raw" and set(entry) & {"salt", "salts", "info", "iterations"}:
            raise ConfigError(f"{where}: salt, info and iterations apply to a derived key (`kdf`)")
        if spec.kdf == "pbkdf2" and (not (spec.salt or spec.salts) or spec.iterations <= 0):
            raise ConfigError(
                f"{where}: kdf pbkdf2 needs `salt` (or `salts`, a list) and `iterations`, e.g. "
                "django-fernet-encrypted-fields: salt = SALT_KEY, iterations = 100000"
            )
        if spec.kdf != "pbkdf2" and spec.salts:
            raise ConfigError(f"{where}: `salts` applies to kdf pbkdf2")
        if spec.kdf == "sha256" and set(entry) & {"salt", "info", "iterations"}:
            raise ConfigError(f"{where}: kdf sha256 takes the key text alone")

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> MultiFernet:
        fernets = []
        for source, text in secrets:
            for key in _fernet_keys(spec, text):
                try:
                    fernets.append(Fernet(key))
                except (ValueError, binascii.Error):
                    raise LegacyKeyError(
                        f"legacy reader {spec.name}: the key from {source} is not a Fernet key "
                        "(32 bytes, url-safe base64); if the app derives it from a secret, set "
                        "`kdf` (sha256, hkdf or pbkdf2, docs/ADOPTING.md)"
                    ) from None
        return MultiFernet(fernets)

    def parse(self, spec: LegacySpec, body: str) -> bytes | None:
        raw = decode(body, "base64url")
        # version 0x80, 8-byte time, 16-byte IV, whole AES blocks, 32-byte HMAC
        if raw is None or len(raw) < 73 or raw[0] != 0x80 or (len(raw) - 57) % 16:
            return None
        return body.encode()

    def longest(self, parts: bytes) -> int:
        # The token's bytes less its 57 of header and HMAC, less at least one of padding.
        return len(parts.rstrip(b"=")) * 3 // 4 - 58

    def decrypt(self, keys: Any, parts: bytes) -> bytes:
        try:
            result: bytes = keys.decrypt(parts)
        except FernetInvalidToken:
            raise InvalidToken() from None
        return result


def _fernet_keys(spec: LegacySpec, text: str) -> list[bytes]:
    """The Fernet keys an app derives from one secret, in the order tried."""
    if spec.kdf == "raw":
        return [text.strip().encode()]
    secret = text.encode()  # as the app has it: Django's SECRET_KEY, an app key
    if spec.kdf == "sha256":
        return [base64.urlsafe_b64encode(hashlib.sha256(secret).digest())]
    if spec.kdf == "hkdf":
        salt = spec.salt.encode() if spec.salt else None
        hkdf = HKDF(hashes.SHA256(), 32, salt=salt, info=spec.info.encode())
        return [base64.urlsafe_b64encode(hkdf.derive(secret))]
    salts = ((spec.salt,) if spec.salt else ()) + spec.salts
    return [
        base64.urlsafe_b64encode(
            PBKDF2HMAC(hashes.SHA256(), 32, salt.encode(), spec.iterations).derive(secret)
        )
        for salt in salts
    ]


FORMAT = FernetFormat()
