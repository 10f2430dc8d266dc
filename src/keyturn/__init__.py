"""keyturn: envelope encryption for an application's secrets in its own database.

The public surface; everything else is private by module.
"""

from __future__ import annotations

from keyturn._core.keyring import DataKey, KeyVersion
from keyturn.config import ColumnSpec, Config, load_config
from keyturn.errors import (
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
from keyturn.legacy import LegacySpec
from keyturn.ops.encrypt_existing import encrypt_existing
from keyturn.ops.import_legacy import import_legacy
from keyturn.ops.reports import RewriteReport
from keyturn.ops.status import ColumnStatus, StatusReport, VersionStatus, status
from keyturn.ops.verify import verify
from keyturn.store import Store, open

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
