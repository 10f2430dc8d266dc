"""A rotation job's progress, as checkpointed in ``keyturn_jobs.progress`` (JSON).

Typed here, stored in the same JSON shape as before (``mode``, ``columns``,
``tables``, ``sweeping``), so a job started by an older keyturn resumes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from keyturn.engine.walk import FAILED, PK, ColumnResult

CHUNKED = "chunks"


class ColumnState:
    """A column's counts and failed rows within a job."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failed: list[list[Any]] = []
        self._failed_keys: set[str] = set()

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> ColumnState:
        state = cls()
        if data:
            state.counts = Counter(data.get("counts", {}))
            for pk in data.get("failed", []):
                state.fail(tuple(pk))
        return state

    def fail(self, pk: PK) -> None:
        """Remember a row that failed, once, however often it is seen."""
        key = repr(list(pk))
        if key not in self._failed_keys:
            self._failed_keys.add(key)
            self.failed.append(list(pk))

    def dump(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "failed": self.failed[:1000]}

    def result(self, name: str) -> ColumnResult:
        """The column's counts for a report; failed rows are counted once each."""
        return ColumnResult(
            name, {**self.counts, FAILED: len(self.failed)}, tuple(map(tuple, self.failed))
        )

    def merge(self, other: ColumnState) -> None:
        self.counts.update(other.counts)
        for pk in other.failed:
            self.fail(tuple(pk))

    def minus(self, before: ColumnState) -> ColumnState:
        """What was added since ``before`` (a chunk's work by this worker)."""
        delta = ColumnState()
        delta.counts = self.counts - before.counts
        for pk in self.failed:
            if repr(list(pk)) not in before._failed_keys:
                delta.fail(tuple(pk))
        return delta


@dataclass
class TableWalk:
    """Where the walk of one table stands: its last primary key, and which passes are done."""

    cursor: list[Any] | None = None
    done: bool = False
    swept: bool = False

    @classmethod
    def load(cls, data: dict[str, Any]) -> TableWalk:
        return cls(data.get("cursor"), bool(data.get("done")), bool(data.get("swept")))

    def dump(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "done": self.done, "swept": self.swept}


@dataclass
class JobProgress:
    """Per column its tally, per table its walk; ``chunked`` for a parallel job, whose
    chunks are done once ``sweeping`` (the closing sweep then runs sequentially)."""

    columns: dict[str, ColumnState] = field(default_factory=dict)
    tables: dict[str, TableWalk] = field(default_factory=dict)
    chunked: bool = False
    sweeping: bool = False

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> JobProgress:
        data = data or {}
        return cls(
            {name: ColumnState.load(c) for name, c in data.get("columns", {}).items()},
            {key: TableWalk.load(w) for key, w in data.get("tables", {}).items()},
            data.get("mode") == CHUNKED,
            bool(data.get("sweeping")),
        )

    def column(self, name: str) -> ColumnState:
        """The tally of column ``name`` (a new one if the job has none yet)."""
        return self.columns.setdefault(name, ColumnState())

    def dump(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "columns": {name: state.dump() for name, state in self.columns.items()},
            "tables": {key: walk.dump() for key, walk in self.tables.items()},
        }
        if self.chunked:
            data["mode"] = CHUNKED
        if self.sweeping:
            data["sweeping"] = True
        return data
