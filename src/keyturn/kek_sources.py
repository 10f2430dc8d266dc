"""Where the KEK comes from: env var, key file, or (outside production) a new key file.

Resolution when the config has no ``kek``: $KEYTURN_KEK, then the key file
``data/.keyturn_kek`` beside the config, then, only when creating a new keyring
outside production, a freshly generated key written to that file (mode 0600).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .errors import ConfigError, InvalidKEK, KeyManagementError, LegacyKeyError
from .kek import LocalKEK, generate_kek_bytes, parse_kek
from .legacy import LegacySpec

KEK_ENV = "KEYTURN_KEK"
KEY_FILE = Path("data") / ".keyturn_kek"
ENV_VAR = "KEYTURN_ENV"


def is_production() -> bool:
    """True when $KEYTURN_ENV says production: fail closed on every key question."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("production", "prod")


def default_key_file(config: Config) -> Path:
    return config.base_dir / KEY_FILE


def _warn(message: str) -> None:
    print(f"keyturn: warning: {message}", file=sys.stderr)


def resolve_kek(
    config: Config,
    *,
    allow_generate: bool = False,
    warn: Callable[[str], None] = _warn,
) -> LocalKEK:
    """Find the KEK for ``config``; generate one only if ``allow_generate``."""
    production = is_production()
    kek: LocalKEK
    if config.kek:
        kek = _explicit(config.kek, config)
    elif os.environ.get(KEK_ENV):
        kek = from_env(KEK_ENV)
    elif production:
        raise InvalidKEK(
            f"{ENV_VAR}=production and no KEK was provided: set {KEK_ENV} or "
            f'`kek = "env:NAME"` / `kek = "file:PATH"` in {config.path.name}; '
            "keyturn never generates a KEK in production"
        )
    elif default_key_file(config).exists():
        kek = from_file(default_key_file(config))
    elif allow_generate:
        kek = generate_key_file(default_key_file(config))
        warn(
            f"no KEK was provided, so a new random one was written to {kek.source[5:]} "
            "(mode 0600). Back it up apart from the database: without it the secrets "
            f"are lost. In production set {KEK_ENV} or use a KMS (docs/KEYS.md)."
        )
    else:
        raise InvalidKEK(
            f"no KEK found: set {KEK_ENV}, create {default_key_file(config)}, or name one "
            f"with `kek = ...` in {config.path.name}"
        )
    check_strength(kek, warn)
    return kek


def check_strength(kek: LocalKEK, warn: Callable[[str], None] = _warn) -> None:
    """Refuse a trivially weak KEK in production; warn about it elsewhere."""
    reason = kek.weakness()
    if reason:
        if is_production():
            raise InvalidKEK(f"the KEK from {kek.source} is refused in production: {reason}")
        warn(f"the KEK from {kek.source} is weak ({reason}); production would refuse it")


def _explicit(spec: str, config: Config) -> LocalKEK:
    if spec.startswith("env:") and len(spec) > 4:
        return from_env(spec[4:])
    if spec.startswith("file:") and len(spec) > 5:
        path = Path(spec[5:]).expanduser()
        return from_file(path if path.is_absolute() else config.base_dir / path)
    raise ConfigError(f'{config.path}: `kek` must be "env:NAME" or "file:PATH" (see docs/KEYS.md)')


def from_env(name: str) -> LocalKEK:
    """The KEK in env var ``name``. It is never written to disk."""
    value = os.environ.get(name)
    if not value:
        raise InvalidKEK(f"the KEK env var {name} is not set")
    return LocalKEK(parse_kek(value, f"env:{name}"), f"env:{name}")


def from_file(path: Path) -> LocalKEK:
    """The KEK in a key file, refused if group or others can read it."""
    source = f"file:{path}"
    text = _read_private_file(path, "KEK file", InvalidKEK)
    return LocalKEK(parse_kek(text, source), source)


def _read_private_file(path: Path, what: str, error: type[KeyManagementError]) -> str:
    """A small key file's text, refused if group or others can read it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise error(f"the {what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read the {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(
                f"the {what} {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        data = handle.read(4096)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def legacy_secrets(spec: LegacySpec, base_dir: Path) -> list[tuple[str, str]]:
    """``(source, text)`` of a legacy reader's keys, in the order they are tried.

    Called only when a legacy value must be decrypted, so once no legacy value
    remains the keys can leave the environment.
    """
    found = []
    for name in spec.key_env:
        value = os.environ.get(name, "")
        if not value.strip():
            raise LegacyKeyError(
                f"legacy reader {spec.name} needs its key in env var {name}, which is not set "
                "(it is needed while legacy values remain; `keyturn status` counts them)"
            )
        found.append((f"env:{name}", value))
    for raw in spec.key_file:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else base_dir / path
        text = _read_private_file(path, f"legacy key file of reader {spec.name}", LegacyKeyError)
        if not text:
            raise LegacyKeyError(f"the legacy key file {path} of reader {spec.name} is empty")
        found.append((f"file:{path}", text))
    return found


def pending_path(key_file: Path) -> Path:
    """Where rotate-kek stages a new key file until the database has committed."""
    return key_file.with_name(key_file.name + ".pending")


def write_key_file(path: Path, key_text: str) -> None:
    """Create a key file with mode 0600; refuse to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def generate_key_file(path: Path) -> LocalKEK:
    """Generate a random KEK into a new 0600 key file."""
    if is_production():
        raise InvalidKEK("keyturn never generates a KEK in production")
    key = generate_kek_bytes()
    write_key_file(path, key.hex())
    return LocalKEK(key, f"file:{path}")
