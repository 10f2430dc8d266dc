"""keyturn's exception hierarchy: every error the library raises, in one module.

Every error derives from :class:`KeyturnError`, and messages never carry key
material or plaintext. The shells map the four families to what they speak:
``keyturn.cli.exit_code`` (1 operation failed, 2 configuration, 3 key error,
4 busy) and the admin API's HTTP statuses.
"""

from __future__ import annotations


class KeyturnError(Exception):
    """Base class of every keyturn error."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidToken(KeyturnError):
    """A token is malformed, tampered with, or was sealed for another context.

    Deliberately carries no detail: which check failed is of use to an attacker.
    """

    def __init__(self) -> None:
        super().__init__("invalid token")


class InvalidDocument(KeyturnError, ValueError):
    """A JSON column's value is not one JSON document, or a secret field in it holds
    something other than a string or null. Names the path, never the content."""


class KeyManagementError(KeyturnError):
    """Base of key problems an operator can act on (exit code 3)."""


class UnknownKeyVersion(KeyManagementError):
    """A token names a DEK version the keyring does not hold (or has destroyed)."""

    def __init__(self, version: int, detail: str = "") -> None:
        self.version = version
        msg = f"token names key version {version}, which this keyring does not have"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class WrongKEK(KeyManagementError):
    """The KEK does not unwrap the keyring's data keys."""


class InvalidKEK(KeyManagementError):
    """A KEK is malformed, weak, missing, or stored unsafely."""


class KMSError(KeyManagementError):
    """The KMS holding the KEK is unreachable, sealed, or refuses the request (fail closed)."""


class LegacyKeyError(KeyManagementError):
    """A legacy reader's key is missing, malformed, or does not open its values."""


class ConfigError(KeyturnError):
    """The configuration is missing, malformed or inconsistent (exit code 2)."""


class SchemaError(ConfigError):
    """A configured table or column does not exist or cannot hold tokens."""


class NotInitialized(ConfigError):
    """The database has no keyturn keyring yet (run ``keyturn init``)."""


class OperationFailed(KeyturnError):
    """An operation ran but could not complete (some rows failed, a database error)."""


class DatabaseError(OperationFailed):
    """The database failed mid-operation (a lost connection, a lock timeout, a full disk).

    The message is the driver's first line with quoted text removed, and the
    driver's exception is not chained: a statement keyturn built may hold
    values, and none may leave keyturn in an exception. Batches already
    committed stay; running the operation again resumes it.
    """

    def __init__(self, message: str, *, connection_invalidated: bool = False) -> None:
        super().__init__(message)
        self.connection_invalidated = connection_invalidated


class KeyringBusy(KeyturnError):
    """Another keyturn operation holds the keyring lock; nothing was written.

    ``holder`` names it (operation, job, owner ``host:pid``, since) where the
    lock row says, for an HTTP 409 or a script to show (exit code 4).
    """

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class KEKChanged(WrongKEK):
    """The keyring was rewrapped under another KEK while this process held the old one."""


class CorruptKeyring(KeyManagementError):
    """``keyturn_keys`` breaks an invariant (e.g. no or several active versions)."""


class KeyInUse(KeyManagementError):
    """A key version cannot be destroyed while something still uses it."""


class TokenError(ConfigError):
    """An admin API token's name is invalid, taken, or unknown."""


class UnqueryableColumn(ConfigError):
    """A query compares, searches or sorts an encrypted column, which holds only tokens."""


class JobNotFound(ConfigError):
    """No job has that id."""


class JobInProgress(OperationFailed):
    """Another live process is working on the job."""


class PreflightFailed(OperationFailed):
    """A check before rotating failed; nothing was written."""


class LeaseLost(OperationFailed):
    """Another worker took this chunk over (our lease had expired): stop working on it."""


class AuditError(KeyturnError):
    """The audit log cannot be written or read: the operation is refused."""


class AuditHeadInvalid(AuditError):
    """The stored audit head fails its MAC; entries cannot be appended safely."""


__all__ = [
    "AuditError",
    "AuditHeadInvalid",
    "ConfigError",
    "CorruptKeyring",
    "DatabaseError",
    "InvalidKEK",
    "InvalidToken",
    "JobInProgress",
    "JobNotFound",
    "KEKChanged",
    "KMSError",
    "KeyInUse",
    "KeyManagementError",
    "KeyringBusy",
    "KeyturnError",
    "LeaseLost",
    "LegacyKeyError",
    "NotInitialized",
    "OperationFailed",
    "PreflightFailed",
    "SchemaError",
    "TokenError",
    "UnknownKeyVersion",
    "UnqueryableColumn",
    "WrongKEK",
]
