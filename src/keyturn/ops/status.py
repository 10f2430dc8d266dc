"""What ``keyturn status`` reports: keys, their use per column, and warnings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, not_, or_, select

from keyturn._core import tokens
from keyturn._core.jsonpath import locate
from keyturn._core.keyring import ACTIVE, DESTROYED, DRAINING
from keyturn._core.shapes import looks_encrypted
from keyturn.db import schema
from keyturn.db.columns import BoundColumn
from keyturn.db.database import stream_raw, utcnow
from keyturn.engine import backups
from keyturn.errors import InvalidDocument
from keyturn.keys.keystore import grace_ends
from keyturn.store import Store


@dataclass(frozen=True)
class ColumnStatus:
    """Counts of one column's values: by key version, plaintext, legacy, unknown and
    empty."""

    column: str
    rows: int
    plaintext: int
    empty: int
    by_version: dict[int, int]
    legacy: int = 0
    #: The rows counted, where a ``where`` filter selects them: ``key in [a, b]``.
    where: str = ""
    #: JSON fields only: documents that are not JSON, or hold something other than a
    #: string or null at this path (``verify`` lists them by primary key).
    invalid: int = 0
    #: Shaped like another scheme's ciphertext, recognised by no legacy reader
    #: (``verify`` lists them by primary key); never counted as plaintext.
    unknown: int = 0


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


def _count_headers(
    conn: Connection, table: Any, expression: Any, rows_: Sequence[Any] = ()
) -> tuple[int, int, int, Counter[int]]:
    """(rows, empty, plaintext, count by key version) of a text expression's values
    in the rows ``rows_`` selects, counted by the database from their headers: no
    value is read into Python.

    One pass with a conditional count per version the keyring has ever had
    (``kt1:<v>:`` and at least one payload character): no sort, faster than a
    GROUP BY on the headers (docs/PERFORMANCE.md). Anything else that starts
    with ``kt1:`` (a version this keyring never had, or a malformed header) is
    rare, and grouped apart."""
    versions = sorted(v for (v,) in conn.execute(select(schema.keys.c.version)))
    empty = or_(expression.is_(None), expression == "")
    token = expression.like("kt1:%")
    known = [expression.like(f"kt1:{v}:_%") for v in versions]

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    totals = (
        select(func.count(), count(empty), count(token), *(count(c) for c in known))
        .select_from(table)
        .where(*rows_)
    )
    rows, empty_n, tokens_n, *per_version = (int(n) for n in conn.execute(totals).one())
    by_version: Counter[int] = Counter(
        {v: n for v, n in zip(versions, per_version, strict=True) if n}
    )
    plaintext = rows - empty_n - tokens_n
    if tokens_n > sum(per_version):  # headers of no version this keyring had
        version, colon = version_text(conn, expression)
        payload = func.length(expression) > colon + 4  # a token needs one after its header
        others = (
            select(version, payload, func.count())
            .select_from(table)
            .where(*rows_, token, *(not_(c) for c in known))
            .group_by(version, payload)
        )
        for text, has_payload, n in conn.execute(others):
            parsed = tokens.version_of(f"kt1:{text}:" + ("x" if has_payload else ""))
            if parsed is None:
                plaintext += int(n)  # text that merely starts with "kt1:"
            else:
                by_version[parsed] += int(n)
    return rows, empty_n, plaintext, by_version


def version_text(conn: Connection, expression: Any) -> tuple[Any, Any]:
    """SQL for a kt1 value's version, the text between "kt1:" and the next colon
    ('' if there is none), and that colon's position after "kt1:"."""
    colon = _find(conn.dialect.name, func.substr(expression, 5), ":")
    return case((colon > 0, func.substr(expression, 5, colon - 1)), else_=""), colon


def longest_token(conn: Connection, column: BoundColumn) -> int:
    """The longest token's length, any version (0 if none): one cheap pass, where
    :func:`longest_tokens` must also parse each token's version."""
    value = column.text
    query = select(func.max(func.length(value))).where(*column.rows, value.like("kt1:%"))
    return int(conn.execute(query).scalar() or 0)


def longest_tokens(conn: Connection, column: BoundColumn) -> dict[int, int]:
    """The longest token's length per key version, counted by the database."""
    value = column.text
    version, _ = version_text(conn, value)
    query = (
        select(version, func.max(func.length(value)))
        .where(*column.rows, value.like("kt1:%"))
        .group_by(version)
    )
    out: dict[int, int] = {}
    for text, longest in conn.execute(query):
        parsed = tokens.version_of(f"kt1:{text}:x")
        if parsed is not None:
            out[parsed] = int(longest)
    return out


def _find(dialect: str, haystack: Any, needle: str) -> Any:
    """The 1-based position of ``needle`` in ``haystack`` (0 if absent), in SQL."""
    if dialect == "postgresql":
        return func.strpos(haystack, needle)
    return func.instr(haystack, needle)


def count_column(store: Store, column: BoundColumn, conn: Connection | None = None) -> ColumnStatus:
    """Classify every value of a column by its header or legacy shape (no decryption);
    for a JSON column, every field of it together."""
    if column.spec.json_fields:
        fields = count_fields(store, column, conn)
        by_version: Counter[int] = Counter()
        for f in fields:
            by_version.update(f.by_version)
        return ColumnStatus(
            column.spec.name,
            sum(f.rows for f in fields),
            sum(f.plaintext for f in fields),
            sum(f.empty for f in fields),
            dict(sorted(by_version.items())),
            sum(f.legacy for f in fields),
            column.spec.describe_where(),
            sum(f.invalid for f in fields),
            sum(f.unknown for f in fields),
        )
    reader = store.legacy_reader(column.spec.name)
    kinds: Counter[str] = Counter()
    with nullcontext(conn) if conn is not None else store.engine.connect() as c:
        rows, empty, plaintext, by_version = _count_headers(
            c, column.table, column.text, column.rows
        )
        if plaintext:  # which of them are legacy or unknown: by shape, never decrypted
            for value in column.secret_values(c):
                kinds[_kind(value, reader)] += 1
    return ColumnStatus(
        column.spec.name,
        rows,
        plaintext - kinds["legacy"] - kinds["unknown"],
        empty,
        dict(sorted(by_version.items())),
        kinds["legacy"],
        column.spec.describe_where(),
        unknown=kinds["unknown"],
    )


def _kind(value: Any, reader: Any) -> str:
    """ "legacy", "unknown" or "plaintext": a value that is not a kt1 token, by shape."""
    if reader is not None and reader.recognises(value):
        return "legacy"
    return "unknown" if looks_encrypted(value) else "plaintext"


def count_fields(
    store: Store, column: BoundColumn, conn: Connection | None = None
) -> list[ColumnStatus]:
    """A JSON column's counts per field path, from each document's fields by their
    header or legacy shape: the documents are read (never decrypted)."""
    spec = column.spec
    paths = spec.json_fields
    reader = store.legacy_reader(spec.name)
    counts = [Counter[str]() for _ in paths]
    versions = [Counter[int]() for _ in paths]
    value = column.text
    query = select(value).where(*column.rows, value.is_not(None), value != "")
    with nullcontext(conn) if conn is not None else store.engine.connect() as c:
        for (document,) in stream_raw(c, query):
            try:
                found = locate(document, paths) if isinstance(document, str) else None
            except InvalidDocument:
                found = None
            if found is None:
                for count in counts:
                    count["invalid"] += 1
                continue
            for count, by_version, spans in zip(counts, versions, found, strict=True):
                for _, end, field in spans:
                    count["rows"] += 1
                    if field is None or field == "":
                        count["empty"] += 1
                    elif not isinstance(field, str) or end < 0:
                        count["invalid"] += 1
                    elif (version := tokens.version_of(field)) is not None:
                        by_version[version] += 1
                    else:
                        count[_kind(field, reader)] += 1
    return [
        ColumnStatus(
            spec.name + path.text,
            count["rows"],
            count["plaintext"],
            count["empty"],
            dict(sorted(by_version.items())),
            count["legacy"],
            spec.describe_where(),
            count["invalid"],
            count["unknown"],
        )
        for path, count, by_version in zip(paths, counts, versions, strict=True)
    ]


def key_versions(store: Store) -> list[dict[str, Any]]:
    """``keyturn keys``: each version's status with the backed-up tokens that use it."""
    report = status(store)
    with store.engine.connect() as conn:
        in_backups = backups.references(conn)
    return [{**asdict(k), "backups": in_backups[k.version]} for k in report.keys]


def _age_days(created: datetime, now: datetime) -> float:
    return round((now - created).total_seconds() / 86400, 1)


def status(store: Store) -> StatusReport:
    """Read the keyring and count every configured column."""
    store.reload()
    columns = tuple(
        entry
        for c in store.bound_columns()
        for entry in (count_fields(store, c) if c.spec.json_fields else [count_column(store, c)])
    )
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
        if col.invalid:
            warnings.append(
                f"{col.column}: {col.invalid} value(s) are not a JSON string or null there, "
                "or their document is not JSON: run `keyturn verify` to list them by primary key"
            )
        if col.unknown:
            warnings.append(
                f"{col.column}: {col.unknown} value(s) look encrypted by a scheme keyturn cannot "
                "read: describe it in a [[legacy]] entry, or if they are plaintext (random keys "
                "in hex or base64) run `keyturn encrypt-existing --include-unknown` "
                "(docs/ADOPTING.md, 'Unknown values')"
            )
        if col.legacy:
            warnings.append(
                f"{col.column}: {col.legacy} legacy value(s) still need their legacy key: run "
                "`keyturn import-legacy` (docs/ADOPTING.md)"
            )
    with store.engine.connect() as conn:
        in_backups = backups.references(conn)
    ends = grace_ends(store.config.apps.grace_seconds, store.versions)
    for k in keys:
        if k.state == DRAINING and not k.rows and not in_backups[k.version]:
            until = ends.get(k.version)
            warnings.append(
                f"key v{k.version} is draining: nothing uses it, but app processes may seal "
                f"under it until {until:%Y-%m-%d %H:%M:%S}Z (the [apps] grace); it retires "
                "at the next prune, restore, rotate or destroy-key after that"
                if until and until > now
                else f"key v{k.version} is draining but nothing uses it any more: it retires "
                "at the next prune, restore, rotate or destroy-key"
            )
        elif k.state == DRAINING:
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
