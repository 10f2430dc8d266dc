"""keyturn: envelope encryption for an application's secrets in its own database.

The public surface; everything else is private by module.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use below: `keyturn --help` needs none of them
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

# Where each public name lives, imported on first use (PEP 562): the CLI and the
# Node client's helpers start without SQLAlchemy when they do not need it.
_HOMES = {
    "column_context": "keyturn._core.context",
    "row_context": "keyturn._core.context",
    "DataKey": "keyturn._core.keyring",
    "KeyVersion": "keyturn._core.keyring",
    "ColumnSpec": "keyturn.config",
    "Config": "keyturn.config",
    "load_config": "keyturn.config",
    "JsonFields": "keyturn.documents",
    "LegacySpec": "keyturn.legacy",
    "encrypt_existing": "keyturn.ops.encrypt_existing",
    "import_legacy": "keyturn.ops.import_legacy",
    "RewriteReport": "keyturn.ops.reports",
    "ColumnStatus": "keyturn.ops.status",
    "StatusReport": "keyturn.ops.status",
    "VersionStatus": "keyturn.ops.status",
    "status": "keyturn.ops.status",
    "verify": "keyturn.ops.verify",
    "Store": "keyturn.store",
    "open": "keyturn.store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name) or ("keyturn.errors" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'keyturn' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
