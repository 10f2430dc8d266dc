"""The batch engine that rewrites a table's secret columns in place, online.

Rows are read in primary-key order by keyset pagination (never OFFSET), every
configured column of a table in the same walk; crypto happens outside any
transaction; each batch is written in one short transaction by
compare-and-swap, so a value the application changed or deleted meanwhile is
never overwritten or brought back (PostgreSQL compares each row's xmin; MariaDB
and MySQL write in the transaction that read the batch with its rows locked:
dialects.LOCKED_READS; SQLite compares only if another connection committed
since the read: dialects.UNCHANGED_READS). Both ``encrypt-existing`` and ``rotate``
are a ``decide`` function per column handed to :class:`TableRewriter`.
"""

from __future__ import annotations

import gc
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from itertools import accumulate, chain
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    and_,
    bindparam,
    literal_column,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from keyturn._core.keyring import Resealed
from keyturn.config import ColumnSpec
from keyturn.db.columns import BoundColumn, keys_in, read_as, row_filter, stored_as, table_of
from keyturn.db.database import (
    DriverStatement,
    data_version,
    database_error,
    driver_cursor,
    exact_equals,
    fetch_raw,
    write_transaction,
    writing_on,
)
from keyturn.db.schema import BACKUP_NAME
from keyturn.engine import dialects
from keyturn.engine.dialects import mysql, postgresql
from keyturn.engine.pacing import Pacing, Pipeline
from keyturn.errors import LeaseLost, SchemaError

_T = TypeVar("_T")

FAILED = "failed"
CONTENDED = "contended"
# Shaped like another scheme's ciphertext, opened by no reader: never sealed as
# plaintext unless the operator says so (keyturn._core.shapes); listed by key.
UNKNOWN = "unknown"
PK = tuple[Any, ...]
# What a value counts as: a category, or for a JSON document one per field it
# holds, each "<path>\t<category>" (see keyturn.engine.fields).
Category = str | tuple[str, ...]
# decide(pk, current value) -> (category, new value or None to leave it alone)
Decide = Callable[[PK, Any], tuple[str, str | None]]
# The same for one column of a whole batch: (primary keys, values) -> (the
# categories, the new values or None), in the batch's order.
DecideBatch = Callable[[Sequence[PK], Sequence[Any]], tuple[Sequence[Category], list[str | None]]]
# The swaps that applied in one column of a batch: (column, primary keys, values
# read, values written), in the same order.
Applied = tuple[BoundColumn, Sequence[PK], Sequence[Any], Sequence[Any]]
# on_batch(conn, last pk or None outside the walk, counts of this batch by
# column name, the swaps that applied): runs inside the batch's transaction,
# e.g. to checkpoint a job and back up old tokens atomically with the rows.
OnBatch = Callable[[Connection, PK | None, dict[str, Counter[str]], list[Applied]], None]


class DocumentNews(list[str | None]):
    """A JSON column's new documents (None: left alone), with the field edits that
    made them: per field, (its spec, the batch rows edited, the tokens replaced,
    the tokens written). A backup keeps the fields, not the documents."""

    def __init__(
        self,
        documents: list[str | None],
        fields: list[tuple[ColumnSpec, list[int], list[str], list[str]]],
    ) -> None:
        super().__init__(documents)
        self.fields = fields
        #: Each field's backup name (``doc$.apiKey``) fits the backup table; else the
        #: backup keeps whole documents, as it did before fields were kept.
        self.by_field = all(len(s.column + s.path) <= BACKUP_NAME for s, *_ in fields)

    def applied(
        self, column: BoundColumn, pks: Sequence[PK], missed: Container[PK]
    ) -> list[Applied]:
        """Each field's swaps that applied, as a column of its own (the field's spec)."""
        out: list[Applied] = []
        for spec, rows, olds, news in self.fields:
            if missed:
                kept = [k for k, j in enumerate(rows) if pks[j] not in missed]
                rows, olds, news = (
                    [rows[k] for k in kept],
                    [olds[k] for k in kept],
                    [news[k] for k in kept],
                )
            if rows:
                out.append((replace(column, spec=spec), [pks[j] for j in rows], olds, news))
        return out


@dataclass(frozen=True)
class ColumnResult:
    """What happened to one column: counts by category, the rows that failed and
    the rows holding values of unknown shape."""

    column: str
    counts: dict[str, int]
    failed_pks: tuple[PK, ...] = ()
    unknown_pks: tuple[PK, ...] = ()


class TableRewriter:
    """Rewrites the configured columns of one table, batch by batch, by compare-and-swap."""

    #: Many rows per UPDATE statement on MariaDB/MySQL (False: the driver's executemany).
    bulk = True
    #: Those rows as a table value constructor where the server has one (MariaDB
    #: 10.3.3+): parsed faster than a SELECT per row (False: SELECT … UNION ALL).
    values_rows = True

    def __init__(
        self,
        engine: Engine,
        columns: Sequence[BoundColumn],
        decides: Sequence[DecideBatch],
        *,
        dry_run: bool = False,
        pacing: Pacing | None = None,
        progress: Callable[[int], None] | None = None,
        on_batch: OnBatch | None = None,
        where: Callable[[list[Column[Any]]], ColumnElement[bool]] | None = None,
        conn: Connection | None = None,
        collect_applied: bool = False,
        until: PK | None = None,
        stop: Callable[[], bool] | None = None,
        key_order: bool = False,
    ) -> None:
        """``where(value columns)`` limits the walk to matching rows; ``conn`` runs
        every batch inside that connection's transaction (``--atomic``);
        ``collect_applied`` hands ``on_batch`` every applied swap (for backups);
        ``until`` ends the walk at that primary key, inclusive (a chunk); ``stop()``,
        asked after each batch, ends it early (``stopped``; the cursor is where the
        last ``on_batch`` put it); ``key_order`` reads by the primary key's index even
        with ``where`` (a sweep over a short range of keys)."""
        self.until = until
        self.key_order = key_order
        self.stop = stop
        self.stopped = False
        self.collect_applied = collect_applied
        self.engine = engine
        self.columns = list(columns)
        self.decides = list(decides)
        self.dry_run = dry_run
        self.pacing = pacing or Pacing()
        self.progress = progress
        self.on_batch = on_batch
        self.where = where
        self.conn = conn
        self.table = table_of(self.columns)
        self.pk = [self.table.c[n] for n in self.columns[0].spec.primary_key]
        self.values = [self.table.c[c.spec.column] for c in self.columns]
        # What is read and compared: the values as text (JSON types cast), or bytes.
        self.texts = [read_as(v) for v in self.values]
        self._dialect = engine.dialect.name
        self._read_committed: bool | None = None  # locked reads: known at the first walk
        # PostgreSQL: each row read with its xmin, which its swap compares.
        self._xmin = self._dialect in dialects.ARRAY
        xmin: list[Any] = [literal_column(postgresql.XMIN)] if self._xmin else []
        self._read = [*self.pk, *self.texts, *xmin]
        # The rows a ``where`` filter selects: read, and swapped only while they match.
        self.rows = row_filter(self.table, self.columns[0].spec)
        self.filter = list(self.columns[0].spec.where)
        # Its values in order, bound after every other value of a swap.
        self.filter_values = [v for _, values in self.filter for v in values]
        self._statements: dict[tuple[tuple[int, ...], bool], DriverStatement] = {}
        self._bulk_statements: dict[tuple[tuple[int, ...], bool], mysql.BulkStatement] = {}
        self._array_statements: dict[tuple[tuple[int, ...], bool], tuple[str, list[str], str]] = {}

    def run(self, after: PK | None = None) -> list[ColumnResult]:
        """Walk the table from just after ``after`` to the end, then retry missed rows.

        A database failure leaves as keyturn's DatabaseError, never as the
        driver's exception: the swap statements may hold the values they write."""

        def walk() -> list[ColumnResult]:
            with _gc_relaxed():
                with Pipeline(self._pipelined()) as pipeline:
                    self._walk(after, pipeline)
                return self._finish()

        return _keyturn_errors(walk)

    def queue(
        self,
        pipeline: Pipeline,
        then: Callable[[list[ColumnResult] | None], None],
        after: PK | None = None,
    ) -> None:
        """:meth:`run`, with the writes queued on ``pipeline``, shared by consecutive
        walks (a worker's chunks): returns once the last batch is queued, so the
        next walk's first read overlaps this one's last write. The retry of missed
        rows and ``then(results)`` run on the pipeline, after that write.

        ``LeaseLost`` from ``on_batch`` (another worker took the rows over) ends
        the walk quietly: what it wrote stays, and ``then(None)`` is called."""

        def finish() -> None:
            results = None
            if not self._lost:
                with suppress(LeaseLost):
                    results = self._finish()
            then(results)

        def walk() -> None:
            with _gc_relaxed():
                self._walk(after, pipeline, yield_lease=True)
            pipeline.then(finish)

        _keyturn_errors(walk)

    def _pipelined(self) -> bool:
        return self.conn is None and not self.dry_run and pipelined(self.engine)

    def _locks_rows(self) -> bool:
        """Whether each batch is read with its rows locked and written in that
        transaction (dialects.LOCKED_READS). Not a filtered read (the closing sweep):
        it would lock every row it scans; its few rows are compared instead."""
        return self.where is None and self._pipelined() and self._dialect in dialects.LOCKED_READS

    def _walk(self, after: PK | None, pipeline: Pipeline, yield_lease: bool = False) -> None:
        """Read, decide and queue every batch. ``yield_lease``: LeaseLost from
        ``on_batch`` stops the walk (``_lost``) instead of failing it."""
        self._counts = [Counter[str]() for _ in self.columns]
        self._failed: list[list[PK]] = [[] for _ in self.columns]
        self._unknown: list[list[PK]] = [[] for _ in self.columns]
        self._missed: dict[PK, tuple[int, ...]] = {}
        self._lost = False
        #: The key after which the last batch was read (None: from the start, or none read).
        self.last_batch_from: PK | None = None
        lock = self._locks_rows()
        if lock and self._read_committed is None:
            with self.engine.connect() as conn:
                self._read_committed = not mysql.logs_statements(conn)
        # The batch being written and the one written before it, so that one is
        # freed here once the next read is back, while the writer waits on the
        # server: freed by the writer, 20,000 rows held up the next write 1-2 ms.
        kept: list[_Decided] = []
        while not self._lost:
            started = time.monotonic()
            batch, held = self._read_after(after, self.pacing.batch_size, lock)
            del kept[:-1]
            try:
                if not batch:
                    break
                self.last_batch_from = after
                after = tuple(batch[-1][: len(self.pk)])
                decided = self._decide(batch, self._failed, self._unknown, held)
                settle = self._settle_or_lose if yield_lease else self._settle_batch
                pipeline.submit(partial(settle, decided, after))
                kept.append(decided)
                held = None  # the write releases it
            finally:
                _release(held)
            self.pacing.after_batch(len(batch), time.monotonic() - started)
            if self.stop is not None and self.stop():
                self.stopped = True
                break

    def _settle_batch(self, decided: _Decided, after: PK) -> None:
        try:
            self._settle(decided, after, self._counts, self._missed)
        finally:
            _release(decided.held)

    def _settle_or_lose(self, decided: _Decided, after: PK) -> None:
        if self._lost:
            _release(decided.held)
            return  # a batch queued before the lease was found lost: not ours to write
        try:
            self._settle_batch(decided, after)
        except LeaseLost:
            self._lost = True

    def _finish(self) -> list[ColumnResult]:
        """Once every queued write is done: retry the missed rows, then the results."""
        counts, failed, unknown, missed = self._counts, self._failed, self._unknown, self._missed
        # Rows whose swap missed were changed by the application between our read
        # and our write. Re-read and retry them; a row deleted meanwhile is gone
        # from the re-read and so is never brought back.
        for _ in range(3):
            if not missed:
                break
            retry = list(missed)
            missed = {}
            for start in range(0, len(retry), 500):
                current = self._read_pks(retry[start : start + 500])
                if current:
                    decided = self._decide(current, failed, unknown)
                    self._settle(decided, None, counts, missed)
        for indexes in missed.values():
            for i in indexes:
                counts[i][CONTENDED] += 1
        return [
            ColumnResult(c.spec.name, dict(counts[i]), tuple(failed[i]), tuple(unknown[i]))
            for i, c in enumerate(self.columns)
        ]

    def _decide(
        self,
        batch: Sequence[tuple[Any, ...]],
        failed: list[list[PK]],
        unknown: list[list[PK]],
        held: _Held | None = None,
    ) -> _Decided:
        """Decide every value of a (non-empty) batch; note the rows that failed and
        those of unknown shape. ``held``: the connection the batch was read on and
        is to be written on, its rows locked or unchanged since (:class:`_Held`)."""
        with _gc_relaxed():
            return self._decide_batch(batch, failed, unknown, held)

    def _decide_batch(
        self,
        batch: Sequence[tuple[Any, ...]],
        failed: list[list[PK]],
        unknown: list[list[PK]],
        held: _Held | None,
    ) -> _Decided:
        n = len(self.pk)
        # The batch by column: the primary key's parts, then the values.
        fields = list(zip(*batch, strict=True))
        xmins = fields.pop() if self._xmin else None
        pks: list[PK] = list(zip(*fields[:n], strict=True))
        olds = fields[n:]
        decided = [decide(pks, olds[i]) for i, decide in enumerate(self.decides)]
        categories = [c for c, _ in decided]
        news = [new for _, new in decided]
        counts = [count_categories(c) for c in categories]
        for i, part in enumerate(counts):
            for name, listed in ((FAILED, failed), (UNKNOWN, unknown)):
                if part[name] or any(k.endswith("\t" + name) for k in part):
                    pairs = zip(pks, categories[i], strict=True)
                    listed[i].extend(pk for pk, c in pairs if is_category(c, name))
        self._check_width(news)
        groups = {} if self.dry_run else _group_changes(news, len(pks))
        writes = []
        for mask, rows in groups.items():
            indexes = _bits(mask)
            written: list[Sequence[Any]] = [*fields[:n], *[olds[i] for i in indexes]]
            written += [news[i] for i in indexes]
            row_xmins: Sequence[str] | None = xmins
            if len(rows) < len(pks):
                written = [[column[j] for j in rows] for column in written]
                row_xmins = xmins and [xmins[j] for j in rows]
            writes.append(self._prepare(indexes, rows, written, held is None, row_xmins))
        return _Decided(pks, olds, categories, news, counts, writes, held)

    def _settle(
        self,
        batch: _Decided,
        last: PK | None,
        counts: list[Counter[str]],
        missed: dict[PK, tuple[int, ...]],
    ) -> None:
        """Write a decided batch in one transaction (with ``on_batch``; in the batch's
        own if it holds one); add its counts to ``counts`` and the rows whose swap
        missed to ``missed``."""
        pks, olds, news = batch.pks, batch.olds, batch.news
        missing: dict[PK, tuple[int, ...]] = {}
        if batch.writes or (self.on_batch and not self.dry_run):
            with self._transaction(batch.held) as conn:
                writes = batch.writes
                if not (batch.held is None or batch.held.unchanged()):
                    # Another connection committed since the read: compare after all.
                    writes = [self._prepare(w.indexes, w.rows, list(w.written)) for w in writes]
                for write in writes:
                    for at in self._write(conn, write):
                        missing[pks[write.rows[at]]] = write.indexes
                if missing:
                    for write in writes:
                        for j in write.rows:
                            if pks[j] in missing:  # counted when applied, on the retry
                                for i in write.indexes:
                                    batch.counts[i].subtract(
                                        count_categories([batch.categories[i][j]])
                                    )
                applied: list[Applied] = []
                if self.collect_applied:
                    by_field = {
                        i: new
                        for i, new in enumerate(news)
                        if isinstance(new, DocumentNews) and new.by_field
                    }
                    for i, documents in by_field.items():
                        applied += documents.applied(self.columns[i], pks, missing)
                    for write in writes:
                        rows = write.rows
                        kept = [j for j in rows if pks[j] not in missing] if missing else rows
                        for i in write.indexes:
                            if i in by_field:
                                continue
                            column, old, new = self.columns[i], olds[i], news[i]
                            if len(kept) == len(pks):  # every row of the batch: as it is
                                applied.append((column, pks, old, new))
                            else:
                                picked = [pks[j] for j in kept], [old[j] for j in kept]
                                if isinstance(new, Resealed):  # with what it decoded
                                    applied.append((column, *picked, new.picked(kept)))
                                else:
                                    applied.append((column, *picked, [new[j] for j in kept]))
                if self.on_batch:
                    by_name = {c.spec.name: batch.counts[i] for i, c in enumerate(self.columns)}
                    with _gc_relaxed():  # a backup packs the batch's values
                        self.on_batch(conn, last, by_name, applied)
        for total, part in zip(counts, batch.counts, strict=True):
            total.update(part)
        missed.update(missing)
        if self.progress and last is not None:
            self.progress(len(pks))

    def _check_width(self, news: list[list[str | None]]) -> None:
        for column, new in zip(self.columns, news, strict=True):
            width = column.width
            if width is not None and max(map(len, filter(None, new)), default=0) > width:
                raise SchemaError(
                    f"[[columns]] {column.spec.name}: a token would exceed "
                    f"the column's {width} characters; widen the column "
                    "(docs/FORMAT.md, 'Column width')"
                )

    def _prepare(
        self,
        indexes: tuple[int, ...],
        rows: list[int],
        written: list[Sequence[Any]],
        compare: bool = True,
        xmins: Sequence[str] | None = None,
    ) -> _Write:
        """The statements that swap the columns ``indexes`` of these rows; ``written``
        holds, column by column, the primary key's parts, the values read and the
        values to write. Built before the transaction (and off the writing thread).
        ``compare=False``: the rows are locked or unchanged since they were read
        (:class:`_Held`); the swap then sends no values read. ``xmins``: each row's
        xmin as read (PostgreSQL), which a bulk swap compares instead of the values."""
        dialect = self.engine.dialect
        many_rows = self.bulk and len(rows) > 1
        if many_rows and dialect.name in dialects.ARRAY:
            arrays = self._prepare_arrays(indexes, rows, written, xmins)
            if arrays is not None:
                return arrays
        sent = written if compare else self._read_replaced(written, indexes, [])
        if not (many_rows and dialect.name in dialects.BULK):
            statement = self._statements.get((indexes, compare))
            if statement is None:
                statement = self._compile(indexes, dialect, compare)
                self._statements[indexes, compare] = statement
            constants = [[v] * len(rows) for v in self.filter_values]
            many = [(statement.sql, statement.from_columns([*sent, *constants]))]
            return _Write(indexes, rows, written, many, many=True)
        # MariaDB/MySQL: many rows per UPDATE statement. Tokens and ints are put in
        # the statement as they are: PyMySQL's per-value escaping cost more than
        # the statement itself (bench/rotate_servers.py). Anything else is bound.
        bulk = self._bulk_statements.get((indexes, compare))
        if bulk is None:
            bulk = self._bulk_statements[indexes, compare] = mysql.swap_statement(
                dialect,
                self.table,
                self.pk,
                self.values,
                indexes,
                self.values_rows,
                self.filter,
                compare,
            )
        per_statement = max(1, min(mysql.STATEMENT_ROWS, mysql.STATEMENT_VALUES // len(sent)))
        statements: list[tuple[str, Any]] = []
        for start, stop in _spans(sent, per_statement, mysql.STATEMENT_CHARS):
            text, bound = bulk.render([column[start:stop] for column in sent])
            # Always with parameters, even none: the driver then reads the
            # preparer's %% in a name as %, as it does for a statement with values.
            statements.append((text, (*bound, *self.filter_values)))
        return _Write(indexes, rows, written, statements, many=False)

    def _prepare_arrays(
        self,
        indexes: tuple[int, ...],
        rows: list[int],
        written: list[Sequence[Any]],
        xmins: Sequence[str] | None,
    ) -> _Write | None:
        """PostgreSQL: the swap as ``UPDATE … FROM unnest(arrays)``, or None if a
        primary key holds a type not sent as an array here."""
        by_xmin = xmins is not None
        statement = self._array_statements.get((indexes, by_xmin))
        if statement is None:
            statement = postgresql.swap_sql(
                self.engine.dialect, self.table, self.pk, self.values, indexes, self.filter, by_xmin
            )
            self._array_statements[indexes, by_xmin] = statement
        sent = written if xmins is None else self._read_replaced(written, indexes, [xmins])
        # The usual batch is one statement: its arrays are built at once, and split
        # by rows and characters only if they come out too long.
        built = self._arrays(statement, sent)
        if built is None:
            return None
        sql, params, chars = built
        statements = [(sql, params)]
        if len(rows) > postgresql.ARRAY_ROWS or chars > postgresql.ARRAY_CHARS:
            statements = []
            for start, stop in _spans(sent, postgresql.ARRAY_ROWS, postgresql.ARRAY_CHARS):
                part = self._arrays(statement, [column[start:stop] for column in sent])
                if part is None:
                    return None
                statements.append(part[:2])
        return _Write(indexes, rows, written, statements, many=False, setup=postgresql.NESTED_LOOPS)

    def _arrays(
        self, statement: tuple[str, list[str], str], columns: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any], int] | None:
        """One swap of these rows (``columns``: their values by column), each column
        sent as an array: its SQL, its parameters, and the arrays' characters."""
        head, types, tail = statement
        exprs: list[str] = []
        texts: list[str] = []
        for column, kind in zip(columns, types, strict=True):
            array = postgresql.array_of(column, kind)
            if array is None:
                return None
            exprs.append(array[0])
            texts.append(array[1])
        sql = head + ", ".join(exprs) + tail
        return sql, [*texts, *self.filter_values], sum(map(len, texts))

    def _write(self, conn: Connection, write: _Write) -> list[int]:
        """Run a prepared swap; return the positions (in ``write.rows``) of the rows
        whose swap missed."""
        count = len(write.rows)
        if write.many:
            ((sql, params),) = write.statements
            result = conn.exec_driver_sql(sql, params)
            swapped = result.rowcount if conn.dialect.supports_sane_multi_rowcount else -1
        else:
            if write.setup:
                _run_setup(conn, write.setup)
            swapped = 0
            for sql, bound in write.statements:
                with driver_cursor(conn, sql) as cursor:
                    cursor.execute(sql, bound)
                    swapped += cursor.rowcount
        if swapped == count:
            return []
        # Some swaps missed (or the driver cannot tell): look at what is there now.
        n = len(self.pk)
        written = write.written
        pks: list[PK] = list(zip(*written[:n], strict=True))
        now = {r[:n]: r[n:] for r in self._read_pks(pks, conn)}
        news = written[n + len(write.indexes) :]
        return [
            at
            for at, pk in enumerate(pks)
            if pk not in now
            or any(now[pk][i] != new[at] for i, new in zip(write.indexes, news, strict=True))
        ]

    def _read_replaced(
        self, written: list[Sequence[Any]], indexes: tuple[int, ...], by: list[Sequence[Any]]
    ) -> list[Sequence[Any]]:
        """``written`` with the columns of values read replaced ``by`` what a swap
        compares instead (nothing for rows locked since their read; xmins)."""
        n = len(self.pk)
        return [*written[:n], *by, *written[n + len(indexes) :]]

    def _compile(self, indexes: tuple[int, ...], dialect: Any, compare: bool) -> DriverStatement:
        # The compare-and-swap: a row is written only if every column we change
        # still holds the value we read. If the app changed one meanwhile (a new
        # secret, or a token written with an older key by a process that has not
        # yet seen the rotation), the swap misses and the row is re-read and
        # retried, so the app's newer value is never overwritten with our stale
        # one. A row the app deleted matches nothing and is never brought back.
        # ``compare=False``: the rows are locked or unchanged since the read
        # (:class:`_Held`), and are found by their key alone.
        same_row = [c == bindparam(f"_pk{j}") for j, c in enumerate(self.pk)]
        unchanged = [
            exact_equals(self.texts[i], bindparam(f"_old{i}"), dialect) for i in indexes if compare
        ]
        filter_names = [
            [f"_w{k}_{m}" for m in range(len(values))] for k, (_, values) in enumerate(self.filter)
        ]
        selected = [
            self.table.c[name].in_([bindparam(n) for n in names])
            for (name, _), names in zip(self.filter, filter_names, strict=True)
        ]
        statement = (
            update(self.table)
            .where(*same_row, *unchanged, *selected)
            .values(
                {
                    self.values[i].name: stored_as(self.values[i], bindparam(f"_new{i}"), dialect)
                    for i in indexes
                }
            )
        )
        names = (
            [f"_pk{j}" for j in range(len(self.pk))]
            + [f"_old{i}" for i in indexes if compare]
            + [f"_new{i}" for i in indexes]
            + [n for names in filter_names for n in names]
        )
        return DriverStatement(statement, dialect, names)

    @contextmanager
    def _transaction(self, held: _Held | None = None) -> Iterator[Connection]:
        if self.conn is not None:
            yield self.conn
        elif held is not None and held.version is not None:  # the read's has ended
            with writing_on(held.conn):
                yield held.conn
        elif held is not None:
            with held.conn.get_transaction() or held.conn.begin():  # the locked read's goes on
                yield held.conn
        else:
            with write_transaction(self.engine) as conn:
                yield conn

    @contextmanager
    def _reader(self, conn: Connection | None = None) -> Iterator[Connection]:
        if conn is not None or self.conn is not None:
            yield conn or self.conn  # type: ignore[misc]
        else:
            with self.engine.connect() as own:
                yield own

    def _rows(
        self, query: Any, conn: Connection | None = None, setup: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Raw rows: the primary key's columns, then the value columns; ``setup``
        (statements without parameters) runs first, in the same transaction."""
        with self._reader(conn) as c:
            if setup:
                _run_setup(c, setup)
            return fetch_raw(c, query)

    def _read_after(
        self, after: PK | None, limit: int, lock: bool = False
    ) -> tuple[list[tuple[Any, ...]], _Held | None]:
        """The next batch; with ``lock``, its rows locked in a transaction left open
        on the connection returned with them; where the dialect notes changes
        (dialects.UNCHANGED_READS), that connection and its change counter; else
        no connection."""
        query = select(*self._read).order_by(*self.pk).limit(limit)
        if after is not None:
            query = query.where(after_key(self.pk, after))
        if self.until is not None:
            query = query.where(not_(after_key(self.pk, self.until)))
        if self.where is not None:
            query = query.where(self.where(self.values))  # JSON types cast by ``where``
        query = query.where(*self.rows)
        # The walk reads by the primary key's index whatever the statistics say; a
        # sweep (``where``) expects few rows, and after the walk the index also leads
        # to every dead version of every row: a scan and a sort of what matches is
        # 5x cheaper there (0.03 s against 0.13 s at 200,000 rows), unless the sweep
        # covers a short range of keys (``key_order``). The planner is told which:
        # its statistics (none, or taken before the walk) can lead it to the other.
        if lock:
            return self._read_locked(query.with_for_update())
        if self._notes_changes():
            return self._read_noting_changes(query)
        if self._dialect not in dialects.ARRAY:
            return self._rows(query), None
        in_order = self.where is None or self.key_order
        order = postgresql.INDEX_ORDER if in_order else postgresql.NO_INDEX_SCAN
        setup = f"{order}; {postgresql.NO_JIT}"
        return self._rows(query, setup=setup), None

    def _read_locked(self, query: Any) -> tuple[list[tuple[Any, ...]], _Held]:
        held = self.engine.connect()
        try:
            if self._read_committed:
                _run_setup(held, mysql.READ_COMMITTED)
            return fetch_raw(held, query), _Held(held)
        except BaseException:
            held.close()
            raise

    def _notes_changes(self) -> bool:
        return self.conn is None and not self.dry_run and self._dialect in dialects.UNCHANGED_READS

    def _read_noting_changes(self, query: Any) -> tuple[list[tuple[Any, ...]], _Held]:
        """SQLite: the batch and ``data_version`` in one read transaction, ended
        before the connection is handed back to write the batch."""
        conn = self.engine.connect()
        try:
            with conn.begin():
                version = data_version(conn)
                rows = fetch_raw(conn, query)
            return rows, _Held(conn, version)
        except BaseException:
            conn.close()
            raise

    def _read_pks(self, pks: Sequence[PK], conn: Connection | None = None) -> list[tuple[Any, ...]]:
        cond = keys_in(self.pk, pks)
        return self._rows(select(*self._read).where(cond, *self.rows), conn)


def pipelined(engine: Engine) -> bool:
    """Whether a walk's writes go on a thread of their own here (dialects.PIPELINED:
    the servers, not SQLite)."""
    return engine.dialect.name in dialects.PIPELINED


def drain(pipeline: Pipeline) -> None:
    """Wait for everything queued on a walk's ``pipeline``; a database failure there
    leaves as keyturn's DatabaseError, as from :meth:`TableRewriter.run`."""
    _keyturn_errors(pipeline.wait)


def _keyturn_errors(call: Callable[[], _T]) -> _T:
    """``call()``, with a database failure raised as keyturn's DatabaseError, never as
    the driver's exception: the swap statements may hold the values they write."""
    try:
        return call()
    except DBAPIError as exc:
        error = database_error(exc)
    raise error  # outside the except: no __context__ holding the statement's values


@dataclass
class _Decided:
    """A batch, decided column by column: what it holds, what to write, the counts."""

    pks: list[PK]
    olds: Sequence[Sequence[Any]]
    categories: list[Sequence[Category]]
    news: list[list[str | None]]
    counts: list[Counter[str]]
    writes: list[_Write]
    held: _Held | None = None  # where it was read and is to be written


@dataclass(frozen=True)
class _Held:
    """The connection a batch was read on, to be written on: with the batch's rows
    locked in its open transaction (dialects.LOCKED_READS), or, SQLite, its read's
    transaction ended, with the database's ``data_version`` as of the read
    (dialects.UNCHANGED_READS)."""

    conn: Connection
    version: int | None = None

    def unchanged(self) -> bool:
        """Inside the write's transaction: whether the rows are still as read (locked,
        or no other connection has committed since)."""
        return self.version is None or data_version(self.conn) == self.version


def _release(held: _Held | None) -> None:
    """Roll back and return the connection a batch was read on (locks go with it)."""
    if held is not None:
        held.conn.close()


@dataclass(frozen=True)
class _Write:
    """Some of a batch's rows, with the same columns to change, ready to send."""

    indexes: tuple[int, ...]  # the columns that change
    rows: list[int]  # positions in the batch
    written: Sequence[Sequence[Any]]  # primary key parts, values read, values to write
    statements: list[tuple[str, Any]]  # (SQL, parameters) to execute
    many: bool  # one statement run with the driver's executemany
    setup: str | None = None  # run first, without parameters (planner settings)


#: The collector's first threshold while a walk runs: above what a batch keeps
#: alive (at most 20,000 rows, a few tracked objects each), so that it runs when
#: objects accumulate (reference cycles left behind), not whenever a batch's rows
#: arrive: each of those passes walks every row still held (0.1 s of verify's
#: 0.4 s over a bare loop at 400,000 rows, docs/PERFORMANCE.md).
_WALK_THRESHOLD = 250_000


class _Collector:
    """Raises the collector's threshold while any walk of this process runs (they
    may overlap, on threads), and puts back what it found once the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._walks = 0
        self._found = gc.get_threshold()

    @contextmanager
    def relaxed(self) -> Iterator[None]:
        with self._lock:
            if not self._walks:
                self._found = gc.get_threshold()
                first = self._found[0]
                if first:  # 0: automatic collection is off, and stays so
                    gc.set_threshold(max(first, _WALK_THRESHOLD), *self._found[1:])
            self._walks += 1
        try:
            yield
        finally:
            with self._lock:
                self._walks -= 1
                if not self._walks:
                    gc.set_threshold(*self._found)


_gc_relaxed = _Collector().relaxed


def count_categories(categories: Sequence[Category]) -> Counter[str]:
    """How many values of each category (a JSON document's fields each counted)."""
    if categories and type(categories[0]) is tuple:
        return Counter(chain.from_iterable(categories))
    # The usual batch has one category throughout: a count by identity, no hashing.
    if categories and categories.count(categories[0]) == len(categories):
        return Counter({categories[0]: len(categories)})  # type: ignore[dict-item]  # str
    return Counter(categories)  # type: ignore[arg-type]  # all str


def is_failed(category: Category) -> bool:
    """Whether a value (or a field of a JSON document) failed."""
    return is_category(category, FAILED)


def is_category(category: Category, name: str) -> bool:
    """Whether a value (or a field of a JSON document) counts as ``name``."""
    if type(category) is str:
        return category == name
    return any(c == name or c.endswith("\t" + name) for c in category)


def each_value(decide: Decide) -> DecideBatch:
    """A batch decider that calls ``decide`` on one value at a time."""

    def decide_batch(
        pks: Sequence[PK], values: Sequence[Any]
    ) -> tuple[list[str], list[str | None]]:
        categories: list[str] = []
        news: list[str | None] = []
        for pk, value in zip(pks, values, strict=True):
            category, new = decide(pk, value)
            categories.append(category)
            news.append(new)
        return categories, news

    return decide_batch


def _bits(mask: int) -> tuple[int, ...]:
    """The column indexes set in a bitmask."""
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def _group_changes(news: list[list[str | None]], rows: int) -> dict[int, list[int]]:
    """The rows to write, grouped by which columns change (a bitmask of indexes)."""
    if all(None not in column for column in news):
        return {(1 << len(news)) - 1: list(range(rows))} if rows else {}
    masks = [0] * rows
    for i, column in enumerate(news):
        bit = 1 << i
        masks = [m | bit if v is not None else m for m, v in zip(masks, column, strict=True)]
    groups: dict[int, list[int]] = {}
    for j, mask in enumerate(masks):
        if mask:
            groups.setdefault(mask, []).append(j)
    return groups


def group_by_table(columns: Sequence[BoundColumn]) -> list[list[BoundColumn]]:
    """Configured columns grouped by (table, primary key, where filter), in
    configuration order: each group is walked as one."""
    groups: dict[tuple[Any, ...], list[BoundColumn]] = {}
    for column in columns:
        spec = column.spec
        groups.setdefault((spec.table, spec.primary_key, spec.where), []).append(column)
    return list(groups.values())


def after_key(pk: Sequence[Any], after: PK) -> ColumnElement[bool]:
    """Keyset condition ``(pk...) > (after...)`` spelled portably."""
    if len(pk) == 1:
        result: ColumnElement[bool] = pk[0] > after[0]
        return result
    clauses = []
    for i in range(len(pk)):
        eq = [pk[j] == after[j] for j in range(i)]
        clauses.append(and_(*eq, pk[i] > after[i]))
    return or_(*clauses)


def _spans(columns: Sequence[Sequence[Any]], rows: int, chars: int) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most ``rows`` rows and, unless one row alone is
    longer, ``chars`` characters of values; ``columns`` holds the values by column."""
    total = len(columns[0])
    widths = [_widths(values) for values in columns]
    if sum(map(max, widths)) * rows <= chars:  # the usual case: no row is long
        return [(start, min(total, start + rows)) for start in range(0, total, rows)]
    ends = list(accumulate(map(sum, zip(*widths, strict=True))))
    spans = []
    start, done = 0, 0
    while start < total:
        stop = max(start + 1, bisect_right(ends, done + chars, start, min(total, start + rows)))
        spans.append((start, stop))
        start, done = stop, ends[stop - 1]
    return spans


def _widths(values: Sequence[Any]) -> list[int]:
    """About how many characters each value takes in a statement (an int: at most 20)."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return list(map(len, values))
    if kinds == {int}:
        return [20] * len(values)
    return [len(v) if isinstance(v, str | bytes) else 20 for v in values]


def _run_setup(conn: Connection, sql: str) -> None:
    with driver_cursor(conn, sql) as cursor:
        cursor.execute(sql)  # no parameters: several statements in one
