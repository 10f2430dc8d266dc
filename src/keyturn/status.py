"""What ``keyturn status`` reports: keys, their use per column, and warnings."""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, inspect, select

from . import schema, tokens
from .columns import BoundColumn
from .database import utcnow
from .keyring import ACTIVE, DESTROYED, DRAINING
from .store import Store

# Long enough for any header ("kt1:2147483647:") plus one payload character.
_HEADER_CHARS = 24


@dataclass(frozen=True)
class ColumnStatus:
    """Counts of one column's values: by key version, plaintext, legacy and empty."""

    column: str
    rows: int
    plaintext: int
    empty: int
    by_version: dict[int, int]
    legacy: int = 0


@dataclass(frozen=True)
class VersionStatus:
    """A key version with its age and how many configured values use it."""

    version: int
    state: str
    created_at: str
    retired_at: str | None
    created_by: str
    kek_id: str | None
    age_days: float
    rows: int


@dataclass(frozen=True)
class StatusReport:
    """Everything ``status`` prints; never a key or a secret."""

    keyring_id: str
    active_version: int
    kek_source: str
    kek_id: str
    cryptoperiod_days: int
    active_age_days: float
    keys: tuple[VersionStatus, ...]
    columns: tuple[ColumnStatus, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for col in data["columns"]:
            col["by_version"] = {str(v): n for v, n in col["by_version"].items()}
        data["keys"] = list(data["keys"])
        data["columns"] = list(data["columns"])
        data["warnings"] = list(data["warnings"])
        return data


def _count_headers(conn: Connection, expression: Any) -> tuple[int, int, int, Counter[int]]:
    """(rows, empty, plaintext, count by key version) of a text expression's values,
    classified by their header alone (no decryption)."""
    by_version: Counter[int] = Counter()
    plaintext = empty = rows = 0
    query = select(func.substr(expression, 1, _HEADER_CHARS))
    for (head,) in conn.execution_options(yield_per=10_000).execute(query):
        rows += 1
        if head is None or head == "":
            empty += 1
            continue
        version = tokens.version_of(head) if isinstance(head, str) else None
        if version is None:
            plaintext += 1
        else:
            by_version[version] += 1
    return rows, empty, plaintext, by_version


def count_column(store: Store, column: BoundColumn, conn: Connection | None = None) -> ColumnStatus:
    """Classify every value of a column by its header or legacy shape (no decryption)."""
    reader = store.legacy_reader(column.spec.name)
    legacy = 0
    with nullcontext(conn) if conn is not None else store.engine.connect() as c:
        rows, empty, plaintext, by_version = _count_headers(c, column.value)
        if reader is not None and plaintext:
            query = column.non_token_values()
            for (value,) in c.execution_options(yield_per=10_000).execute(query):
                legacy += reader.recognises(value)
    return ColumnStatus(
        column.spec.name,
        rows,
        plaintext - legacy,
        empty,
        dict(sorted(by_version.items())),
        legacy,
    )


def backup_references(conn: Connection) -> Counter[int]:
    """How many backed-up tokens (keyturn_backup) use each key version."""
    if not inspect(conn).has_table(schema.backup.name):
        return Counter()
    return _count_headers(conn, schema.backup.c.old_token)[3]


def _age_days(created: datetime, now: datetime) -> float:
    return round((now - created).total_seconds() / 86400, 1)


def status(store: Store) -> StatusReport:
    """Read the keyring and count every configured column."""
    store.reload()
    columns = tuple(count_column(store, c) for c in store.bound_columns())
    in_use: Counter[int] = Counter()
    for col in columns:
        in_use.update(col.by_version)
    now = utcnow()
    keys = tuple(
        VersionStatus(
            v.version,
            v.state,
            v.created_at.isoformat() + "Z",
            v.retired_at.isoformat() + "Z" if v.retired_at else None,
            v.created_by,
            v.kek_id,
            _age_days(v.created_at, now),
            in_use.get(v.version, 0),
        )
        for v in store.versions
    )
    active = next(k for k in keys if k.state == ACTIVE)
    period = store.config.cryptoperiod_days
    warnings = []
    if active.age_days > period:
        warnings.append(
            f"active key v{active.version} is {active.age_days:.0f} days old, past the "
            f"{period}-day cryptoperiod: run `keyturn rotate`"
        )
    for col in columns:
        if col.plaintext:
            warnings.append(
                f"{col.column}: {col.plaintext} plaintext value(s): run `keyturn encrypt-existing`"
            )
        if col.legacy:
            warnings.append(
                f"{col.column}: {col.legacy} legacy value(s) still need their legacy key: run "
                "`keyturn import-legacy` (docs/ADOPTING.md)"
            )
    with store.engine.connect() as conn:
        in_backups = backup_references(conn)
    for k in keys:
        if k.state == DRAINING:
            warnings.append(
                f"key v{k.version} is draining: {k.rows} value(s) and {in_backups[k.version]} "
                "backed-up token(s) still use it, so it is not retired yet (`keyturn rotate` "
                "moves values off it; `keyturn prune JOB` drops a job's backups)"
            )
    known = {k.version: k.state for k in keys}
    for version, n in sorted(in_use.items()):
        if known.get(version, DESTROYED) == DESTROYED:
            warnings.append(
                f"{n} value(s) use key v{version}, which this keyring does not hold: they cannot "
                "be decrypted (restore the keyring from a backup, docs/ROTATION.md)"
            )
    return StatusReport(
        store.keyring_id,
        active.version,
        store.kek.source,
        store.kek.kek_id,
        period,
        active.age_days,
        keys,
        columns,
        tuple(warnings),
    )
