"""Importing an object of the app's own code that keyturn.toml names as
``"module:attribute"`` (models, a legacy reader), with the config's directory
on the path; usable from every layer."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from keyturn.errors import ConfigError


def import_object(target: str, base_dir: Path, where: str) -> Any:
    """``module:attribute``, imported with ``base_dir`` on the path (for as long as
    the import takes); ConfigError naming ``where`` and what is missing."""
    module_name, _, attribute = target.partition(":")
    base = str(base_dir)
    added = base not in sys.path
    if added:
        sys.path.append(base)
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name} ({exc})") from None
    except AttributeError:
        raise ConfigError(f"{where}: {module_name} has no {attribute}") from None
    finally:
        if added:
            sys.path.remove(base)
