"""``format = "fernet"``: Fernet tokens (cryptography's, and every port of it), keys
tried in order as a MultiFernet."""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from cryptography.fernet import InvalidToken as FernetInvalidToken

from keyturn.errors import InvalidToken, LegacyKeyError
from keyturn.legacy.base import LegacySpec, decode


class FernetFormat:
    """The ``fernet`` legacy format."""

    name = "fernet"
    options: frozenset[str] = frozenset()

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        pass  # no options

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> MultiFernet:
        fernets = []
        for source, text in secrets:
            try:
                fernets.append(Fernet(text.strip().encode()))
            except (ValueError, binascii.Error):
                raise LegacyKeyError(
                    f"legacy reader {spec.name}: the key from {source} is not a Fernet key "
                    "(32 bytes, url-safe base64)"
                ) from None
        return MultiFernet(fernets)

    def parse(self, spec: LegacySpec, body: str) -> bytes | None:
        raw = decode(body, "base64url")
        # version 0x80, 8-byte time, 16-byte IV, whole AES blocks, 32-byte HMAC
        if raw is None or len(raw) < 73 or raw[0] != 0x80 or (len(raw) - 57) % 16:
            return None
        return body.encode()

    def decrypt(self, keys: Any, parts: bytes) -> bytes:
        try:
            result: bytes = keys.decrypt(parts)
        except FernetInvalidToken:
            raise InvalidToken() from None
        return result


FORMAT = FernetFormat()
