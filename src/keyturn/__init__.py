"""keyturn: envelope encryption for an application's secrets in its own database.

The public surface; everything else is private by module.
"""

from __future__ import annotations

from keyturn._core.context import column_context, row_context
from keyturn._core.keyring import DataKey, KeyVersion
from keyturn.config import ColumnSpec, Config, load_config
from keyturn.documents import JsonFields
from keyturn.errors import (
    AuditError,
    AuditHeadInvalid,
    ConfigError,
    CorruptKeyring,
    DatabaseError,
    InvalidDocument,
    InvalidKEK,
    InvalidToken,
    JobInProgress,
    JobNotFound,
    KEKChanged,
    KeyInUse,
    KeyManagementError,
    KeyringBusy,
    KeyturnError,
    KMSError,
    LeaseLost,
    LegacyKeyError,
    NotInitialized,
    OperationFailed,
    PreflightFailed,
    SchemaError,
    TokenError,
    UnknownKeyVersion,
    UnqueryableColumn,
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
    "AuditError",
    "AuditHeadInvalid",
    "ColumnSpec",
    "ColumnStatus",
    "Config",
    "ConfigError",
    "CorruptKeyring",
    "DataKey",
    "DatabaseError",
    "InvalidDocument",
    "InvalidKEK",
    "InvalidToken",
    "JobInProgress",
    "JobNotFound",
    "JsonFields",
    "KEKChanged",
    "KMSError",
    "KeyInUse",
    "KeyManagementError",
    "KeyVersion",
    "KeyringBusy",
    "KeyturnError",
    "LeaseLost",
    "LegacyKeyError",
    "LegacySpec",
    "NotInitialized",
    "OperationFailed",
    "PreflightFailed",
    "RewriteReport",
    "SchemaError",
    "StatusReport",
    "Store",
    "TokenError",
    "UnknownKeyVersion",
    "UnqueryableColumn",
    "VersionStatus",
    "WrongKEK",
    "column_context",
    "encrypt_existing",
    "import_legacy",
    "load_config",
    "open",
    "row_context",
    "status",
    "verify",
]
