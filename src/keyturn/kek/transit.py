"""A KEK kept in OpenBao / HashiCorp Vault's Transit engine: no KEK material is ever local.

``kek = "transit://HOST:PORT/KEYNAME?mount=transit"`` (plain HTTP, loopback
only) or ``transit+https://HOST:PORT/KEYNAME?mount=transit&ca_cert=PATH``.
The token comes from ``token_file=PATH`` in the URL, else $BAO_TOKEN, else
$VAULT_TOKEN. DEKs are wrapped by Transit encrypt and unwrapped by Transit
decrypt; any KMS failure (unreachable, sealed, token refused, key missing)
raises and nothing falls back to a local key.

Transit's ``rewrap`` ignores associated data, so the keyring AAD is bound
inside the wrapped plaintext instead: ``SHA-256(aad) || DEK``. A wrapped DEK
moved to another version or keyring unwraps to a digest that does not match
and is refused; forging one needs the Transit key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from keyturn._core.kek import KEKOrigin
from keyturn.config import Config
from keyturn.errors import ConfigError, InvalidKEK, KMSError, WrongKEK
from keyturn.keyfiles import read_private_file

TOKEN_ENVS = ("BAO_TOKEN", "VAULT_TOKEN")
SCHEMES = ("transit", "transit+https")
_QUERY_KEYS = {"mount", "ca_cert", "token_file", "timeout"}
_DIGEST = 32
T = TypeVar("T")


def is_transit(spec: str) -> bool:
    return spec.split("://", 1)[0] in SCHEMES and "://" in spec


class TransitKEK:
    """Wraps and unwraps DEKs with a Transit key; the key never leaves the KMS."""

    def __init__(
        self,
        url: str,
        key_name: str,
        *,
        mount: str = "transit",
        token: str,
        verify: bool | str = True,
        timeout: float = 10.0,
        source: str,
    ) -> None:
        import hvac  # optional dependency: pip install 'keyturn[vault]'

        self.url = url
        self.key_name = key_name
        self.mount = mount
        scheme, _, location = source.partition(":")
        self.origin = KEKOrigin(scheme, location)
        self.source = source
        host = urlsplit(url).netloc
        self.kek_id = f"transit:{host}/{mount}/{key_name}"
        self._client = hvac.Client(url=url, token=token, verify=verify, timeout=timeout)

    def __repr__(self) -> str:
        return f"TransitKEK(kek_id={self.kek_id!r}, token=<redacted>)"

    def weakness(self) -> str | None:
        return None  # the KMS generated the key

    def wrap(self, dek: bytes, aad: bytes) -> str:
        plaintext = base64.b64encode(hashlib.sha256(aad).digest() + dek).decode()
        response = self._call(
            lambda: self._client.secrets.transit.encrypt_data(
                self.key_name, plaintext, mount_point=self.mount
            )
        )
        return str(response["data"]["ciphertext"])

    def unwrap(self, wrapped: str, aad: bytes) -> bytes:
        response = self._call(
            lambda: self._client.secrets.transit.decrypt_data(
                self.key_name, wrapped, mount_point=self.mount
            ),
            wrong=True,
        )
        try:
            plain = base64.b64decode(response["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise WrongKEK(self._wrong()) from None
        digest, dek = plain[:_DIGEST], plain[_DIGEST:]
        if not hmac.compare_digest(digest, hashlib.sha256(aad).digest()):
            raise WrongKEK(self._wrong())
        return dek

    def rotate(self) -> int:
        """Add a new version of the Transit key; returns it (new wraps use it)."""
        self._call(
            lambda: self._client.secrets.transit.rotate_key(self.key_name, mount_point=self.mount)
        )
        return self.latest_version()

    def latest_version(self) -> int:
        response = self._call(
            lambda: self._client.secrets.transit.read_key(self.key_name, mount_point=self.mount)
        )
        return int(response["data"]["latest_version"])

    def rewrap(self, wrapped: str) -> str:
        """Re-encrypt a wrapped DEK under the latest Transit key version, inside the KMS."""
        response = self._call(
            lambda: self._client.secrets.transit.rewrap_data(
                self.key_name, wrapped, mount_point=self.mount
            ),
            wrong=True,
        )
        return str(response["data"]["ciphertext"])

    def set_min_decryption_version(self, version: int) -> None:
        """Archive older Transit key versions: ciphertexts under them stop decrypting."""
        self._call(
            lambda: self._client.secrets.transit.update_key_configuration(
                self.key_name, min_decryption_version=version, mount_point=self.mount
            )
        )

    def _wrong(self) -> str:
        return f"the Transit key {self.kek_id} does not open this keyring"

    def _call(self, request: Callable[[], T], *, wrong: bool = False) -> T:
        """Run one KMS request, turning every failure into a keyturn error (fail closed)."""
        import hvac.exceptions as vault
        import requests

        where = f"the KMS at {self.url}"
        try:
            return request()
        except vault.InvalidRequest:
            if wrong:
                raise WrongKEK(self._wrong()) from None
            raise KMSError(f"{where} rejected a request on key {self.kek_id}") from None
        except vault.Forbidden:
            raise KMSError(
                f"{where} refused the token (permission denied): check "
                f"{'/'.join(TOKEN_ENVS)} or token_file, and that its policy allows "
                f"{self.mount}/encrypt, decrypt, rewrap and rotate on {self.key_name}"
            ) from None
        except vault.InvalidPath:
            raise KMSError(
                f"{where} has no Transit key {self.key_name!r} at mount {self.mount!r}"
            ) from None
        except (vault.VaultDown, vault.InternalServerError, vault.BadGateway):
            raise KMSError(f"{where} is sealed or unavailable; nothing was written") from None
        except vault.VaultError as exc:
            raise KMSError(f"{where} failed: {type(exc).__name__}") from None
        except requests.exceptions.RequestException as exc:
            raise KMSError(
                f"{where} is unreachable ({type(exc).__name__}); keyturn does not fall back "
                "to any local key"
            ) from None


def open_transit(origin: KEKOrigin, config: Config) -> TransitKEK:
    """The provider of ``kek = "transit://…"`` and ``"transit+https://…"``."""
    return from_transit(str(origin), config.base_dir, _read_token_file)


def _read_token_file(path: Path, what: str) -> str:
    return read_private_file(path, what, InvalidKEK)


def from_transit(spec: str, base_dir: Path, read_file: Callable[[Path, str], str]) -> TransitKEK:
    """Parse a ``transit://`` KEK spec and find its token (never in the spec itself)."""
    parts = urlsplit(spec)
    where = f"`kek = {spec.split('?', 1)[0]!r}`"
    key_name = parts.path.strip("/")
    if not parts.hostname or not parts.port or not key_name or "/" in key_name:
        raise ConfigError(
            f"{where}: expected transit://HOST:PORT/KEYNAME?mount=transit "
            "(or transit+https://…&ca_cert=PATH)"
        )
    if parts.username or parts.password:
        raise ConfigError(f"{where}: never put a token in the URL; use BAO_TOKEN or token_file")
    query: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_QUERY_KEYS))}"
        )
    https = parts.scheme == "transit+https"
    if not https and not _loopback(parts.hostname):
        raise ConfigError(
            f"{where}: plain-HTTP transit:// is allowed only on a loopback address; "
            "use transit+https:// (with ca_cert=PATH for a private CA)"
        )
    verify: bool | str = True
    if "ca_cert" in query:
        if not https:
            raise ConfigError(f"{where}: ca_cert applies only to transit+https://")
        ca = Path(query["ca_cert"]).expanduser()
        verify = str(ca if ca.is_absolute() else base_dir / ca)
    try:
        timeout = float(query.get("timeout", 10))
    except ValueError:
        raise ConfigError(f"{where}: timeout must be a number of seconds") from None
    token = _token(query.get("token_file"), base_dir, read_file)
    scheme = "https" if https else "http"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return TransitKEK(
        f"{scheme}://{host}:{parts.port}",
        key_name,
        mount=query.get("mount", "transit"),
        token=token,
        verify=verify,
        timeout=timeout,
        source=spec,
    )


def _token(token_file: str | None, base_dir: Path, read_file: Callable[[Path, str], str]) -> str:
    if token_file:
        path = Path(token_file).expanduser()
        token = read_file(path if path.is_absolute() else base_dir / path, "KMS token file")
        if not token:
            raise InvalidKEK(f"the KMS token file {token_file} is empty")
        return token
    for name in TOKEN_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise InvalidKEK(
        "the Transit KEK needs a token: set BAO_TOKEN or VAULT_TOKEN, or add "
        "token_file=PATH (mode 0600) to the kek URL"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
