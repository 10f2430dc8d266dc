"""keyturn: envelope encryption for an application's secrets in its own database.

The public surface; everything else is private by module.
"""

from __future__ import annotations

from .config import ColumnSpec, Config, load_config
from .encrypt_existing import encrypt_existing
from .errors import (
    ConfigError,
    InvalidKEK,
    InvalidToken,
    KeyManagementError,
    KeyturnError,
    NotInitialized,
    OperationFailed,
    SchemaError,
    UnknownKeyVersion,
    WrongKEK,
)
from .keyring import DataKey, KeyVersion
from .reports import RewriteReport
from .status import ColumnStatus, StatusReport, VersionStatus, status
from .store import Store, open

__all__ = [
    "ColumnSpec",
    "ColumnStatus",
    "Config",
    "ConfigError",
    "DataKey",
    "InvalidKEK",
    "InvalidToken",
    "KeyManagementError",
    "KeyVersion",
    "KeyturnError",
    "NotInitialized",
    "OperationFailed",
    "RewriteReport",
    "SchemaError",
    "Store",
    "StatusReport",
    "UnknownKeyVersion",
    "VersionStatus",
    "WrongKEK",
    "encrypt_existing",
    "load_config",
    "open",
    "status",
]
