"""keyturn: envelope encryption for an application's secrets in its own database.

The public surface; everything else is private by module.
"""

from __future__ import annotations

from .config import ColumnSpec, Config, load_config
from .encrypt_existing import encrypt_existing
from .errors import (
    ConfigError,
    DatabaseError,
    InvalidKEK,
    InvalidToken,
    KEKChanged,
    KeyManagementError,
    KeyringBusy,
    KeyturnError,
    KMSError,
    LegacyKeyError,
    NotInitialized,
    OperationFailed,
    SchemaError,
    UnknownKeyVersion,
    WrongKEK,
)
from .import_legacy import import_legacy
from .keyring import DataKey, KeyVersion
from .legacy import LegacySpec
from .reports import RewriteReport
from .status import ColumnStatus, StatusReport, VersionStatus, status
from .store import Store, open
from .verify import verify

__all__ = [
    "ColumnSpec",
    "ColumnStatus",
    "Config",
    "ConfigError",
    "DatabaseError",
    "DataKey",
    "InvalidKEK",
    "InvalidToken",
    "KEKChanged",
    "KMSError",
    "KeyManagementError",
    "KeyringBusy",
    "KeyVersion",
    "KeyturnError",
    "LegacyKeyError",
    "LegacySpec",
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
    "import_legacy",
    "load_config",
    "open",
    "status",
    "verify",
]
