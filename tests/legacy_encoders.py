"""Homegrown encryption schemes as apps wrote them, written here independently of keyturn.

Each encoder mirrors one layout of docs/ADOPTING.md, built from the
primitives directly (not from keyturn.legacy), so the tests prove keyturn
reads what other code wrote. Each LAYOUTS entry: the ``[[legacy]]`` TOML
body (without key_env) and an encoder taking the key text and plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


def _gcm(key: bytes, iv_len: int, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
    """(iv, ciphertext, tag) the way Node's createCipheriv + getAuthTag gives them."""
    iv = os.urandom(iv_len)
    sealed = AESGCM(key).encrypt(iv, plaintext, None)
    return iv, sealed[:-16], sealed[-16:]


def trek(key_text: str, plaintext: bytes) -> str:
    """seed 000: key = SHA-256(ENCRYPTION_KEY + suffix); 'enc:v1:' + base64(iv‖tag‖ct)."""
    key = hashlib.sha256((key_text + ":api_keys:v1").encode()).digest()
    iv, ct, tag = _gcm(key, 12, plaintext)
    return "enc:v1:" + base64.b64encode(iv + tag + ct).decode()


def floh(key_text: str, plaintext: bytes) -> str:
    """seed 004 style: raw 64-hex key; hex 'iv:tag:ct' with a 16-byte IV."""
    iv, ct, tag = _gcm(bytes.fromhex(key_text), 16, plaintext)
    return f"{iv.hex()}:{tag.hex()}:{ct.hex()}"


def pbkdf2_b64url(key_text: str, plaintext: bytes) -> str:
    """A passphrase through PBKDF2-SHA256; unpadded base64url of iv‖ct‖tag, no prefix."""
    kdf = PBKDF2HMAC(hashes.SHA256(), 32, b"app-salt", 10_000)
    iv, ct, tag = _gcm(kdf.derive(key_text.encode()), 12, plaintext)
    return base64.urlsafe_b64encode(iv + ct + tag).decode().rstrip("=")


def scrypt_hex(key_text: str, plaintext: bytes) -> str:
    """A passphrase through scrypt (Node's scryptSync defaults); 's1$' + hex(iv‖tag‖ct)."""
    key = Scrypt(b"pepper", 32, 2**14, 8, 1).derive((key_text + "|tokens").encode())
    iv, ct, tag = _gcm(key, 12, plaintext)
    return "s1$" + (iv + tag + ct).hex()


def node_text_key(key_text: str, plaintext: bytes) -> str:
    """A Node app's `Buffer.from(KEY).subarray(0, 32)` as the key; hex 'iv:tag:ct'."""
    iv, ct, tag = _gcm(key_text.encode()[:32], 12, plaintext)
    return f"{iv.hex()}:{tag.hex()}:{ct.hex()}"


def hex_looking_text_key(key_text: str, plaintext: bytes) -> str:
    """A 32-character key of hex digits used as its characters (AES-256, not 128)."""
    iv, ct, tag = _gcm(key_text.encode(), 12, plaintext)
    return "h1." + base64.b64encode(iv + ct + tag).decode()


def fernet(key_text: str, plaintext: bytes) -> str:
    """Python's Fernet, as django-fernet-fields and friends store it."""
    return Fernet(key_text.encode()).encrypt(plaintext).decode()


def raw_key() -> str:
    return os.urandom(32).hex()


def passphrase() -> str:
    return base64.b64encode(os.urandom(24)).decode()


def long_text_key() -> str:
    """A 40-character key (a passphrase-like env var an app cuts to 32 bytes)."""
    return base64.b64encode(os.urandom(30)).decode()


def hex_text_key() -> str:
    return os.urandom(16).hex()  # 32 hex characters


def fernet_key() -> str:
    return Fernet.generate_key().decode()


# name -> (TOML body of the [[legacy]] entry, encoder, key generator)
LAYOUTS: dict[str, tuple[str, Callable[[str, bytes], str], Callable[[], str]]] = {
    "trek": (
        'format = "aes-gcm"\nprefix = "enc:v1:"\nencoding = "base64"\norder = "iv,tag,ct"\n'
        'kdf = "sha256"\nsuffix = ":api_keys:v1"\n',
        trek,
        passphrase,
    ),
    "floh": (
        'format = "aes-gcm"\nencoding = "hex"\nseparator = ":"\norder = "iv,tag,ct"\niv_len = 16\n',
        floh,
        raw_key,
    ),
    "pbkdf2": (
        'format = "aes-gcm"\nencoding = "base64url"\norder = "iv,ct,tag"\nkdf = "pbkdf2"\n'
        'salt = "app-salt"\niterations = 10000\n',
        pbkdf2_b64url,
        passphrase,
    ),
    "scrypt": (
        'format = "aes-gcm"\nprefix = "s1$"\nencoding = "hex"\nkdf = "scrypt"\n'
        'salt = "pepper"\nsuffix = "|tokens"\n',
        scrypt_hex,
        passphrase,
    ),
    "node-text-key": (
        'format = "aes-gcm"\nencoding = "hex"\nseparator = ":"\nkey_encoding = "utf8"\n'
        "key_bytes = 32\n",
        node_text_key,
        long_text_key,
    ),
    "hex-looking-text-key": (
        'format = "aes-gcm"\nprefix = "h1."\norder = "iv,ct,tag"\nkey_encoding = "utf8"\n',
        hex_looking_text_key,
        hex_text_key,
    ),
    "fernet": ('format = "fernet"\n', fernet, fernet_key),
}
