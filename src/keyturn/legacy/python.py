"""``format = "python"``: a layout no option can describe (a signed, pickled payload;
an app's own envelope), read by the app's own function.

``reader = "module:function"`` is called as ``function(value, keys)``: the stored
value (text; from a BLOB or bytea column, bytes when they are not UTF-8) and the
texts of the reader's ``key_env`` / ``key_file`` keys, in order; it returns the
plaintext bytes, or None if the value does not open. Values are recognised by
``prefix``, or by ``recognise = "module:function"`` (value in, bool out, no key).
Anything the function raises counts as "does not open" and its message is never
shown (it could hold the value). There is no tag keyturn can check, so
``import-legacy`` samples as for aes-cbc: every sampled value must open. The
module is imported with keyturn.toml's directory on the path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from keyturn.appimport import import_object
from keyturn.errors import ConfigError, InvalidToken
from keyturn.legacy.base import LegacySpec

# "module:function" -> the function, imported when the config is loaded.
_HOOKS: dict[str, Callable[..., Any]] = {}


class PythonFormat:
    """The ``python`` legacy format: the app's own reader function."""

    name = "python"
    authenticated = False
    #: Given a binary column's bytes that are not UTF-8 (a pickled, signed payload).
    reads_bytes = True
    #: The app's reader may give back more bytes than the value holds (decompressed).
    grows = True
    options = frozenset({"reader", "recognise"})

    def check(self, spec: LegacySpec, entry: dict[str, Any], where: str) -> None:
        for key in ("reader", "recognise"):
            value = getattr(spec, key)
            if key in entry and (":" not in value or value.startswith(":")):
                raise ConfigError(f'{where}: `{key}` must be "module:function"')
        if not spec.reader:
            raise ConfigError(f'{where}: format python needs `reader = "module:function"`')
        if not spec.prefix and not spec.recognise:
            raise ConfigError(
                f"{where}: format python needs `prefix` or `recognise` (a function telling "
                "its values from plaintext), or every value would be taken for legacy"
            )

    def derive_keys(self, spec: LegacySpec, secrets: Sequence[tuple[str, str]]) -> Any:
        return hook(spec.reader), [text for _, text in secrets]

    def parse(self, spec: LegacySpec, body: str | bytes) -> str | bytes | None:
        value = spec.prefix.encode() + body if isinstance(body, bytes) else spec.prefix + body
        if spec.recognise:
            try:
                if not hook(spec.recognise)(value):
                    return None
            except Exception:
                return None
        return value

    def longest(self, parts: Any) -> None:
        return None  # the app's reader alone knows its layout

    def decrypt(self, keys: Any, parts: Any) -> bytes:
        reader, secrets = keys
        try:
            plain = reader(parts, list(secrets))
        except Exception:
            raise InvalidToken() from None
        if not isinstance(plain, bytes):
            raise InvalidToken()
        return plain


def hook(target: str) -> Callable[..., Any]:
    """A function named in a ``[[legacy]]`` entry, loaded with the config."""
    found = _HOOKS.get(target)
    if found is None:
        raise ConfigError(f"legacy hook {target} was not loaded with the configuration")
    return found


def load_hooks(spec: LegacySpec, base_dir: Path, where: str) -> None:
    """Import ``reader`` and ``recognise`` of a python-format entry, with ``base_dir``
    (keyturn.toml's directory) on the path; ConfigError naming what is missing."""
    for target in (spec.reader, spec.recognise):
        if not target or target in _HOOKS:
            continue
        found = import_object(target, base_dir, where)
        if not callable(found):
            raise ConfigError(f"{where}: {target} is not a function")
        _HOOKS[target] = found


FORMAT = PythonFormat()
