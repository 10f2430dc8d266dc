"""Frozen report objects returned by operations and printed by the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keyturn.engine.fields import split_counts
from keyturn.engine.walk import CONTENDED, FAILED, ColumnResult


def pk_json(pk: Sequence[Any]) -> Any:
    """A primary key as JSON: the value itself, or a list for composite keys."""
    values = [v if isinstance(v, int | float | str) or v is None else str(v) for v in pk]
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class RewriteReport:
    """The outcome of a pass over every configured column (counts, never values)."""

    operation: str
    dry_run: bool
    categories: tuple[str, ...]
    columns: dict[str, dict[str, int]]
    failed_rows: tuple[dict[str, Any], ...]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: Values shaped like another scheme's ciphertext that no reader opens, by key.
    unknown_rows: tuple[dict[str, Any], ...] = ()

    @classmethod
    def build(
        cls,
        operation: str,
        categories: Sequence[str],
        results: Iterable[ColumnResult],
        *,
        dry_run: bool,
        seconds: float,
        extra: dict[str, Any] | None = None,
    ) -> RewriteReport:
        cats = tuple(dict.fromkeys([*categories, FAILED, CONTENDED]))
        columns: dict[str, dict[str, int]] = {}
        failed: list[dict[str, Any]] = []
        unknown: list[dict[str, Any]] = []
        for result in results:
            for name, counts in split_counts(result.column, result.counts).items():
                if counts or name == result.column:
                    columns[name] = {c: counts.get(c, 0) for c in cats}
            table, column = result.column.split(".", 1)
            for pks, rows in ((result.failed_pks, failed), (result.unknown_pks, unknown)):
                rows.extend({"table": table, "column": column, "pk": pk_json(pk)} for pk in pks)
        return cls(
            operation,
            dry_run,
            cats,
            columns,
            tuple(failed),
            round(seconds, 3),
            extra or {},
            tuple(unknown),
        )

    @property
    def totals(self) -> dict[str, int]:
        return {c: sum(col[c] for col in self.columns.values()) for c in self.categories}

    @property
    def failed(self) -> int:
        return self.totals[FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "operation": self.operation,
            "dry_run": self.dry_run,
            **self.totals,
            "columns": self.columns,
            "failed_rows": list(self.failed_rows),
            "unknown_rows": list(self.unknown_rows),
            "seconds": self.seconds,
        }


def audit_summary(report: RewriteReport) -> dict[str, Any]:
    """What the audit log keeps of a report: totals, failed values per column, job and
    version; no primary keys."""
    data: dict[str, Any] = {"totals": report.totals}
    failed = {name: counts[FAILED] for name, counts in report.columns.items() if counts[FAILED]}
    if failed:
        data["columns_failed"] = failed
    for key in ("job", "new_version", "resumed"):
        if key in report.extra:
            data[key] = report.extra[key]
    return data
