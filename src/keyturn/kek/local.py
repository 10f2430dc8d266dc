"""The local KEK providers: ``env:NAME`` (an env var) and ``file:PATH`` (a 0600 key file).

Neither ever writes the key anywhere but a new key file of mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from keyturn._core.kek import KEK, KEKOrigin, LocalKEK, generate_kek_bytes, parse_kek
from keyturn.config import Config
from keyturn.errors import InvalidKEK
from keyturn.kek import is_production
from keyturn.keyfiles import read_private_file, write_key_file


def from_env(name: str) -> LocalKEK:
    """The KEK in env var ``name``. It is never written to disk."""
    origin = KEKOrigin("env", name)
    value = os.environ.get(name)
    if not value:
        raise InvalidKEK(f"the KEK env var {name} is not set")
    return LocalKEK(parse_kek(value, str(origin)), origin)


def from_file(path: Path) -> LocalKEK:
    """The KEK in a key file, refused if group or others can read it."""
    origin = KEKOrigin("file", str(path))
    text = read_private_file(path, "KEK file", InvalidKEK)
    return LocalKEK(parse_kek(text, str(origin)), origin)


def key_file(kek: KEK) -> Path | None:
    """The key file a KEK was read from, if it was (rotate-kek replaces that file)."""
    return Path(kek.origin.location) if kek.origin.scheme == "file" else None


def pending_path(key_file: Path) -> Path:
    """Where rotate-kek stages a new key file until the database has committed."""
    return key_file.with_name(key_file.name + ".pending")


def generate_key_file(path: Path) -> LocalKEK:
    """Generate a random KEK into a new 0600 key file; never in production."""
    if is_production():
        raise InvalidKEK("keyturn never generates a KEK in production")
    key = generate_kek_bytes()
    write_key_file(path, key.hex())
    return LocalKEK(key, KEKOrigin("file", str(path)))


def open_env(origin: KEKOrigin, config: Config) -> LocalKEK:
    """The provider of ``kek = "env:NAME"``."""
    return from_env(origin.location)


def open_file(origin: KEKOrigin, config: Config) -> LocalKEK:
    """The provider of ``kek = "file:PATH"`` (relative to keyturn.toml's directory)."""
    path = Path(origin.location).expanduser()
    return from_file(path if path.is_absolute() else config.base_dir / path)
