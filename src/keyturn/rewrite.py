"""The batch engine that rewrites a column's values in place, online.

Rows are read in primary-key order by keyset pagination (never OFFSET); crypto
happens outside any transaction; each batch is written in one short transaction
by compare-and-swap, so a value the application changed or deleted meanwhile is
never overwritten or brought back. Both ``encrypt-existing`` and ``rotate`` are
a ``decide`` function handed to :class:`ColumnRewriter`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, or_, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from .columns import BoundColumn
from .database import write_transaction
from .errors import SchemaError

FAILED = "failed"
CONTENDED = "contended"

PK = tuple[Any, ...]
# decide(pk, current value) -> (category, new value or None to leave the row alone)
Decide = Callable[[PK, Any], tuple[str, str | None]]
# on_batch(conn, last pk or None in the sweep, counts of this batch, the swaps
# that applied as {"_pk0"..., "_old", "_new"}): runs inside the batch's
# transaction, e.g. to checkpoint a job and back up old tokens atomically with
# the rows they cover.
OnBatch = Callable[[Connection, PK | None, Counter[str], list[dict[str, Any]]], None]


@dataclass(frozen=True)
class ColumnResult:
    """What happened to one column: counts by category and the rows that failed."""

    column: str
    counts: dict[str, int]
    failed_pks: tuple[PK, ...] = ()
    rows: int = 0


@dataclass
class Pacing:
    """Batch sizing: adapt to ``chunk_time`` seconds a batch, at most ``max_rate`` rows/s."""

    chunk_time: float = 0.5
    max_rate: float | None = None
    batch_size: int = 200
    min_batch: int = 10
    max_batch: int = 20_000
    _started: float = field(default_factory=time.monotonic)
    _rows: int = 0

    def after_batch(self, rows: int, seconds: float) -> None:
        self._rows += rows
        if seconds > 0 and rows >= self.batch_size:
            ideal = self.batch_size * self.chunk_time / seconds
            self.batch_size = int(
                min(self.max_batch, max(self.min_batch, (self.batch_size + ideal) / 2))
            )
        if self.max_rate:
            ahead = self._rows / self.max_rate - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)


class ColumnRewriter:
    """Rewrites one column, batch by batch, by compare-and-swap."""

    def __init__(
        self,
        engine: Engine,
        column: BoundColumn,
        decide: Decide,
        *,
        dry_run: bool = False,
        pacing: Pacing | None = None,
        progress: Callable[[int], None] | None = None,
        on_batch: OnBatch | None = None,
        where: ColumnElement[bool] | None = None,
        conn: Connection | None = None,
    ) -> None:
        """``where`` limits the walk to matching rows; ``conn`` runs every batch
        inside that connection's transaction (``--atomic``) instead of one each."""
        self.engine = engine
        self.where = where
        self.conn = conn
        self.column = column
        self.decide = decide
        self.dry_run = dry_run
        self.pacing = pacing or Pacing()
        self.progress = progress
        self.on_batch = on_batch
        pk = column.pk
        same_row = [c == bindparam(f"_pk{i}") for i, c in enumerate(pk)]
        # The compare-and-swap: a row is written only if it still holds the
        # value we read. If the app changed it meanwhile (a new secret, or a
        # token written with an older key by a process that has not seen the
        # rotation yet), the swap misses and the row is re-read and retried, so
        # the app's newer value is never overwritten with our stale one. A row
        # the app deleted matches nothing, so it is never brought back.
        self._cas = (
            update(column.table)
            .where(*same_row, column.value == bindparam("_old"))
            .values({column.value.name: bindparam("_new")})
        )

    def run(self, after: PK | None = None) -> ColumnResult:
        """Walk the column from just after ``after`` to the end, then sweep missed rows."""
        counts: Counter[str] = Counter()
        failed: list[PK] = []
        missed: list[PK] = []
        rows = 0
        while True:
            started = time.monotonic()
            batch = self._read_after(after, self.pacing.batch_size)
            if not batch:
                break
            after = batch[-1][0]
            batch_counts, batch_failed, batch_missed = self._process(batch, after)
            counts.update(batch_counts)
            failed.extend(batch_failed)
            missed.extend(batch_missed)
            rows += len(batch)
            if self.progress:
                self.progress(len(batch))
            self.pacing.after_batch(len(batch), time.monotonic() - started)
        # Rows whose swap missed were changed by the application between our read
        # and our write. Re-read and retry them; a row deleted meanwhile is gone
        # from the re-read and so is never brought back.
        for _ in range(3):
            if not missed:
                break
            retry = missed
            missed = []
            for start in range(0, len(retry), 500):
                current = self._read_pks(retry[start : start + 500])
                batch_counts, batch_failed, batch_missed = self._process(current, None)
                counts.update(batch_counts)
                failed.extend(batch_failed)
                missed.extend(batch_missed)
        counts[CONTENDED] += len(missed)
        return ColumnResult(self.column.spec.name, dict(counts), tuple(failed), rows)

    def _process(
        self, batch: Sequence[tuple[PK, Any]], last: PK | None
    ) -> tuple[Counter[str], list[PK], list[PK]]:
        counts: Counter[str] = Counter()
        failed: list[PK] = []
        writes: list[dict[str, Any]] = []
        categories: list[str] = []
        for pk, value in batch:
            category, new = self.decide(pk, value)
            if category == FAILED:
                failed.append(pk)
            if new is None or self.dry_run:
                counts[category] += 1
                continue
            params = {f"_pk{i}": v for i, v in enumerate(pk)}
            params["_old"] = value
            params["_new"] = new
            writes.append(params)
            categories.append(category)
        width = self.column.width
        if width is not None and any(len(w["_new"]) > width for w in writes):
            raise SchemaError(
                f"[[columns]] {self.column.spec.name}: a token would exceed the column's "
                f"{width} characters; widen the column (docs/FORMAT.md, 'Column width')"
            )
        missed: list[PK] = []
        if writes or (self.on_batch and not self.dry_run):
            with self._transaction() as conn:
                if writes:
                    missed = self._write(conn, writes)
                missed_set = set(missed)
                applied = []
                for w, category in zip(writes, categories, strict=True):
                    if self._pk_of(w) not in missed_set:
                        counts[category] += 1
                        applied.append(w)
                if self.on_batch:
                    self.on_batch(conn, last, counts, applied)
        return counts, failed, missed

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self.conn is not None:
            yield self.conn
        else:
            with write_transaction(self.engine) as conn:
                yield conn

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        if self.conn is not None:
            yield self.conn
        else:
            with self.engine.connect() as conn:
                yield conn

    def _write(self, conn: Connection, writes: list[dict[str, Any]]) -> list[PK]:
        """Execute the swaps; return the pks whose swap did not apply."""
        result = conn.execute(self._cas, writes)
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(writes):
            return []
        # Some swaps missed (or the driver cannot tell): look at what is there now.
        pks = [self._pk_of(w) for w in writes]
        now = dict(self._read_pks(pks, conn))
        return [pk for pk, w in zip(pks, writes, strict=True) if now.get(pk) != w["_new"]]

    @staticmethod
    def _pk_of(params: dict[str, Any]) -> PK:
        return tuple(v for k, v in params.items() if k.startswith("_pk"))

    def _read_after(self, after: PK | None, limit: int) -> list[tuple[PK, Any]]:
        pk = self.column.pk
        query = select(*pk, self.column.value).order_by(*pk).limit(limit)
        if after is not None:
            query = query.where(_after(pk, after))
        if self.where is not None:
            query = query.where(self.where)
        with self._reader() as conn:
            rows = conn.execute(query).all()
        n = len(pk)
        return [(tuple(r[:n]), r[n]) for r in rows]

    def _read_pks(self, pks: Sequence[PK], conn: Connection | None = None) -> list[tuple[PK, Any]]:
        pk = self.column.pk
        if len(pk) == 1:
            cond: ColumnElement[bool] = pk[0].in_([p[0] for p in pks])
        else:
            cond = tuple_(*pk).in_(pks)
        query = select(*pk, self.column.value).where(cond)
        n = len(pk)
        if conn is None:
            with self._reader() as own:
                rows = own.execute(query).all()
        else:
            rows = conn.execute(query).all()
        return [(tuple(r[:n]), r[n]) for r in rows]


def _after(pk: Sequence[Any], after: PK) -> ColumnElement[bool]:
    """Keyset condition ``(pk...) > (after...)`` spelled portably."""
    if len(pk) == 1:
        result: ColumnElement[bool] = pk[0] > after[0]
        return result
    clauses = []
    for i in range(len(pk)):
        eq = [pk[j] == after[j] for j in range(i)]
        clauses.append(and_(*eq, pk[i] > after[i]))
    return or_(*clauses)
