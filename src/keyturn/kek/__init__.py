"""KEK providers: where the key-encryption key comes from, by the scheme of ``kek = ...``.

A provider is a function ``(origin, config) -> KEK`` registered under a URL
scheme: ``env`` and ``file`` (:mod:`keyturn.kek.local`), ``transit`` and
``transit+https`` (:mod:`keyturn.kek.transit`). :func:`register` adds one; its
module is imported only when a config names its scheme.

Resolution when the config has no ``kek``: $KEYTURN_KEK, then the key file
``data/.keyturn_kek`` beside the config, then, only when creating a new keyring
outside production, a freshly generated key written to that file (mode 0600).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from keyturn._core.kek import KEK, KEKOrigin, ManagedKEK
from keyturn.config import Config
from keyturn.errors import ConfigError, InvalidKEK

KEK_ENV = "KEYTURN_KEK"
KEY_FILE = Path("data") / ".keyturn_kek"
ENV_VAR = "KEYTURN_ENV"

Provider = Callable[[KEKOrigin, Config], KEK]

# scheme -> provider, or "module:function" imported on first use.
_PROVIDERS: dict[str, Provider | str] = {
    "env": "keyturn.kek.local:open_env",
    "file": "keyturn.kek.local:open_file",
    "transit": "keyturn.kek.transit:open_transit",
    "transit+https": "keyturn.kek.transit:open_transit",
}


def register(scheme: str, provider: Provider | str) -> None:
    """Make ``kek = "SCHEME:..."`` open with ``provider`` (a function, or "module:function")."""
    _PROVIDERS[scheme] = provider


def open_kek(spec: str, config: Config) -> KEK:
    """The KEK a ``kek = "SCHEME:LOCATION"`` value names."""
    scheme, sep, location = spec.partition(":")
    provider = _PROVIDERS.get(scheme) if sep and location else None
    if provider is None:
        raise ConfigError(
            f'{config.path}: `kek` must be "env:NAME", "file:PATH" or '
            '"transit://HOST:PORT/KEY?mount=transit" (see docs/KEYS.md)'
        )
    if isinstance(provider, str):
        module, _, name = provider.partition(":")
        provider = getattr(importlib.import_module(module), name)
        _PROVIDERS[scheme] = provider
    return provider(KEKOrigin(scheme, location), config)


def is_managed(kek: KEK) -> bool:
    """True for a KEK its KMS rotates itself (rotate-kek then takes no new key)."""
    return isinstance(kek, ManagedKEK)


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
) -> KEK:
    """Find the KEK for ``config``; generate one only if ``allow_generate``."""
    from keyturn.kek.local import from_env, from_file, generate_key_file

    production = is_production()
    kek: KEK
    if config.kek:
        kek = open_kek(config.kek, config)
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
        path = default_key_file(config)
        kek = generate_key_file(path)
        warn(
            f"no KEK was provided, so a new random one was written to {path} "
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


def new_kek(env_name: str | None = None, file: Path | None = None) -> KEK:
    """The new KEK for rotate-kek, from an env var or a key file (exactly one), checked
    for strength: one place for the CLI's flags and the server's ``[server]`` settings."""
    from keyturn.kek.local import from_env, from_file

    if env_name and not file:
        kek = from_env(env_name)
    elif file and not env_name:
        kek = from_file(file)
    else:
        raise ConfigError("give the new KEK as exactly one of an env var and a key file")
    check_strength(kek)
    return kek


def check_strength(kek: KEK, warn: Callable[[str], None] = _warn) -> None:
    """Refuse a trivially weak KEK in production; warn about it elsewhere."""
    reason = kek.weakness()
    if reason:
        if is_production():
            raise InvalidKEK(f"the KEK from {kek.source} is refused in production: {reason}")
        warn(f"the KEK from {kek.source} is weak ({reason}); production would refuse it")
