"""Online DEK rotation: mint a version, re-encrypt every older token, retire what is unused.

The :class:`Rotator` walks each configured column with the batch engine
(keyset pagination, crypto outside the transaction, compare-and-swap writes),
checkpointing the job and backing up old tokens in each batch's transaction.
Killed at any instant, it resumes from the last checkpoint: no new version is
minted for an unfinished job. A closing sweep re-encrypts tokens that app
processes wrote with an older key while the rotation ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sqlalchemy import Column, Connection, and_, func, not_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from keyturn._core import tokens
from keyturn._core.jsonpath import locate
from keyturn._core.keyring import ACTIVE, DRAINING, DataKey, Keyring
from keyturn._core.shapes import looks_encrypted
from keyturn.config import ColumnSpec
from keyturn.db import migrations, schema
from keyturn.db.columns import BoundColumn, text_of
from keyturn.db.database import fetch_raw, utcnow, write_transaction
from keyturn.db.locking import KeyringLock, me
from keyturn.engine import backups, chunks, jobs
from keyturn.engine.fields import SEPARATOR, batch_decider
from keyturn.engine.pacing import Pacing, Pipeline
from keyturn.engine.walk import (
    CONTENDED,
    FAILED,
    PK,
    UNKNOWN,
    Applied,
    ColumnResult,
    DecideBatch,
    OnBatch,
    TableRewriter,
    drain,
    group_by_table,
    pipelined,
)
from keyturn.errors import (
    ConfigError,
    InvalidDocument,
    InvalidToken,
    LeaseLost,
    OperationFailed,
    PreflightFailed,
    UnknownKeyVersion,
)
from keyturn.keys import keystore
from keyturn.keys.keystore import grace_ends
from keyturn.legacy import LegacyReader
from keyturn.ops.encrypt_existing import count_rows, group_label
from keyturn.ops.lifecycle import refresh_states
from keyturn.ops.reports import RewriteReport, pk_json
from keyturn.ops.rotate_progress import ColumnState, JobProgress, TableWalk
from keyturn.ops.status import count_column, longest_token, longest_tokens
from keyturn.store import Store

ROTATED = "rotated"
CURRENT = "already_current"
EMPTY = "skipped_empty"
PLAINTEXT = "skipped_plaintext"
LEGACY = "skipped_legacy"
SWEPT = "swept"
CATEGORIES = (ROTATED, CURRENT, EMPTY, PLAINTEXT, LEGACY, UNKNOWN, SWEPT)
KIND = "rotate"
SAMPLE = 20

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class RotateOptions:
    """How to rotate. ``atomic`` runs everything in one transaction."""

    dry_run: bool = False
    atomic: bool = False
    backup: bool = True
    chunk_time: float = 0.5
    max_rate: float | None = None
    #: Processes re-encrypting disjoint primary-key ranges (chunks) in parallel.
    workers: int = 1
    #: ``workers`` is then the most: helpers start only for the cores this machine
    #: leaves idle while the first worker runs (``--workers auto``).
    auto_workers: bool = False
    #: Work on the chunks of the unfinished parallel job, then exit (another host).
    join: bool = False
    #: Rows per leased chunk; None: 10,000, or 50,000 with ``auto_workers``, whose
    #: first worker often runs alone (each chunk costs a claim and a checkpoint).
    rows_per_chunk: int | None = None
    #: How long a killed worker's chunk stays leased before another takes it.
    lease_seconds: float = float(jobs.LEASE_SECONDS)
    #: How long to wait for the keyring lock if another operation holds it.
    wait: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.atomic and (self.workers > 1 or self.join):
            raise ConfigError("an atomic rotation runs in one transaction: no workers, no join")
        if self.join and self.dry_run:
            raise ConfigError("join works on a running job; a dry run writes nothing")

    @property
    def chunk_rows(self) -> int:
        if self.rows_per_chunk is not None:
            return self.rows_per_chunk
        return 50_000 if self.auto_workers else 10_000

    @property
    def mode(self) -> str:
        """What run() does: dry-run, join, atomic, parallel or sequential."""
        if self.dry_run:
            return "dry-run"
        if self.join:
            return "join"
        if self.atomic:
            return "atomic"
        return "parallel" if self.workers > 1 else "sequential"


class Rotator:
    """Rotates the data key of one store's database."""

    def __init__(
        self,
        store: Store,
        options: RotateOptions | None = None,
        *,
        actor: str = "library",
        progress: ProgressFactory | None = None,
        before_write: Callable[[], None] | None = None,
        lock: KeyringLock | None = None,
        job_id: str | None = None,
    ) -> None:
        self.store = store
        #: The new job's id, chosen by the caller (the admin API answers with it at once).
        self.job_id = job_id
        self.options = options or RotateOptions()
        self.actor = actor
        self.progress = progress
        #: Runs after the preflight, before the first write (the audit entry).
        self.before_write = before_write
        #: The keyring lock, if the caller took it already; run() releases it.
        self.lock = lock
        #: How many processes worked on the chunks (this one and its helpers), and
        #: for ``--workers auto`` the idle cores measured before helpers started.
        self.workers_used = 1
        self.idle_cores: float | None = None

    # -- checks ---------------------------------------------------------------

    def preflight(self) -> list[BoundColumn]:
        """Tables and columns exist, the KEK opens the keyring, a sample of each
        column decrypts. Reads only."""
        self.store.reload()  # the drift check: WrongKEK if any DEK does not unwrap
        columns = self.store.bound_columns()
        job = self._unfinished()
        target = job.target_version if job and job.target_version else None
        target = target or max(v.version for v in self.store.versions) + 1
        for column in columns:
            self._sample(column)
            self._check_width(column, target)
        return columns

    def _check_width(self, column: BoundColumn, target: int) -> None:
        """Every re-encrypted token must fit: a token grows by a character when the
        version gains a digit (v9 to v10)."""
        if column.width is None:
            return
        # Only tokens under a held version are re-encrypted; the oldest has the shortest header.
        held = self.store.keyring.versions or {1}
        shortest = min(len(tokens.header(v)) for v in held)
        grows = len(tokens.header(target)) - shortest
        if grows <= 0 and self.store.engine.dialect.name != "sqlite":
            # Re-encrypted, a token keeps its length, and the server keeps every
            # value within the width (SQLite does not): no table scan needed.
            return
        with self.store.engine.connect() as conn:
            if longest_token(conn, column) + grows <= column.width:
                return  # even a token under the oldest key held, grown to the target, fits
            longest = longest_tokens(conn, column)
        need = max(
            (n - len(tokens.header(v)) + len(tokens.header(target)) for v, n in longest.items()),
            default=0,
        )
        column.check_fits(need, f"re-encrypting under key v{target}")

    def _sample(self, column: BoundColumn) -> None:
        value, pk = column.text, column.pk
        spec = column.spec
        holds_token = value.like('%"kt1:%') if spec.json_fields else value.like("kt1:%")
        query = select(*pk, value).where(*column.rows, holds_token).order_by(*pk).limit(SAMPLE)
        with self.store.engine.connect() as conn:
            rows = fetch_raw(conn, query)
        n = len(pk)
        for row in rows:
            key = tuple(row[:n])
            for field, token in _tokens_in(spec, row[n]):
                try:
                    field.open_token(
                        lambda t, c: self.store.decrypt_bytes(t, context=c), token, key
                    )
                except (InvalidToken, UnknownKeyVersion) as exc:
                    raise PreflightFailed(
                        f"preflight: {field.name}{field.path} at primary key {pk_json(key)} "
                        f"does not decrypt ({type(exc).__name__}); fix or clear that value, or "
                        "check the column's `bind` setting. Nothing was written."
                    ) from None

    # -- the run --------------------------------------------------------------

    def run(self) -> RewriteReport:
        """Rotate (or resume, or join, or dry-run). Everything but a dry run and
        ``--join`` holds the keyring lock from the first write to the end."""
        started = time.monotonic()
        try:
            columns = self.preflight()
            if self.options.mode in ("dry-run", "join"):
                return self._run_unlocked(columns, started)
            if self.lock is None:
                self.lock = KeyringLock(self.store.engine, KIND).acquire(self.options.wait)
            self.store.reload()  # under the lock: the KEK and versions as they are now
            return self._run_locked(columns, started, self.lock)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _unfinished(self) -> jobs.Job | None:
        return jobs.find_unfinished(self.store.engine, KIND)

    def _run_unlocked(self, columns: list[BoundColumn], started: float) -> RewriteReport:
        job = self._unfinished()
        if self.options.dry_run:
            return self._dry_run(columns, job, started)
        return self._join(columns, job, started)

    def _run_locked(
        self, columns: list[BoundColumn], started: float, lock: KeyringLock
    ) -> RewriteReport:
        job = self._unfinished()
        if job is not None and self.options.atomic:
            raise OperationFailed(
                f"job {job.id} is unfinished; resume it with `keyturn rotate` (without --atomic)"
            )
        if job is not None:
            with write_transaction(self.store.engine) as conn:
                jobs.claim(conn, job)  # refuses if a live --join worker still owns it
        if self.before_write is not None:
            self.before_write()
        if self.options.atomic:
            return self._run_atomic(columns, started)
        resumed = job is not None
        if job is None:
            job = self._start(columns)
        else:
            self.store.reload()
        lock.set_job(job.id)
        assert job.target_version is not None
        ring = self.store.keyring
        if ring.active_version != job.target_version:
            raise OperationFailed(
                f"job {job.id} targets key v{job.target_version} but v{ring.active_version} "
                "is active; see docs/ROTATION.md, 'A rotation that failed or was killed'"
            )
        progress = JobProgress.load(job.progress)
        # If anything below raises, the job stays `running`; its owner (this
        # process) is then dead or gone, so the next `keyturn rotate` resumes it.
        if progress.chunked:  # resumed: --workers auto goes on alone (no probe while resuming)
            self._run_chunks(
                columns,
                ring,
                job,
                progress,
                helpers_wanted=0 if self.options.auto_workers else None,
            )
        results = self._rotate_columns(columns, ring, job, progress, None)
        with write_transaction(self.store.engine) as conn:
            states = refresh_states(self.store, conn, columns=columns)
            report = self._report(conn, results, job, states, started, resumed=resumed)
            jobs.finish(conn, job.id, _outcome(report), report.to_dict())
        self.store.reload()
        return report

    def _start(self, columns: list[BoundColumn]) -> jobs.Job:
        """Back up, then mint the new version and the job in one transaction."""
        job_id = self.job_id or jobs.new_id()
        backup_path = self._file_backup(job_id)
        workers = self.options.workers
        with write_transaction(self.store.engine) as conn:
            _, job = self._mint_job(
                conn,
                job_id,
                backup_path,
                {"columns": [c.spec.name for c in columns], "workers": workers},
            )
            if workers > 1 and not self.options.auto_workers:  # auto starts sequential
                job = replace(job, progress=JobProgress(chunked=True).dump())
                jobs.checkpoint(conn, job.id, job.progress)
        self.store.reload()
        return job

    # -- parallel: leased chunks ------------------------------------------------

    def _run_chunks(
        self,
        columns: list[BoundColumn],
        ring: Keyring,
        job: jobs.Job,
        progress: JobProgress,
        helpers_wanted: int | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        """Plan the chunks (once), work on them with helper processes until all are
        done, then hand the closing sweep to the sequential code, once.

        ``helpers_wanted``: how many helpers ``--workers auto`` measured room for,
        the sequential walk having stopped where the chunks begin (its counts and
        cursors are in ``progress``); otherwise N-1. ``pacing``: that walk's, which
        this process's chunks go on with; with ``helpers_wanted``, helpers start
        only if at least HELPERS_PAY_SECONDS of rows at its pace are left."""
        if progress.sweeping:
            return
        groups = {_table_key(g): g for g in group_by_table(columns)}
        wanted = self.options.workers - 1 if helpers_wanted is None else helpers_wanted
        pace = pacing.rate() if pacing is not None and helpers_wanted else None
        # --workers auto: the rows a helper needs left to pay for its start.
        short = int(pace * HELPERS_PAY_SECONDS) if pace else 0
        with write_transaction(self.store.engine) as conn:
            if not chunks.is_planned(conn, job.id):
                for key, group in groups.items():
                    walked = progress.tables.get(key, TableWalk())
                    if walked.done:
                        continue
                    first = group[0]
                    start = tuple(walked.cursor) if walked.cursor else None
                    chunks.plan(
                        conn, job.id, key, first.pk, self.options.chunk_rows, first.rows, start
                    )
                    if short > 0:
                        short -= chunks.rows_after(conn, first.pk, first.rows, start, short)
                if not progress.chunked:  # with the plan, or not at all
                    progress.chunked = True
                    jobs.checkpoint(conn, job.id, progress.dump())
        if short > 0:
            wanted = 0  # done before a helper would be under way: work the chunks alone
        from keyturn.ops.rotate_helper import spawn  # it imports this module

        config_path = self.store.config.path
        helpers = [spawn(config_path, self.options) for _ in range(wanted)]
        try:
            self._work_chunks(groups, ring, job, coordinator=True, helpers=helpers, pacing=pacing)
            self.workers_used = 1 + len(helpers)
        finally:
            for helper in helpers:
                if helper.wait() != 0:
                    print(
                        f"keyturn: warning: a helper worker exited with {helper.returncode}; "
                        "its chunks were taken over",
                        file=sys.stderr,
                    )
        # From what a sequential walk counted before the chunks began (none if the
        # job was parallel from the start), plus every chunk's tally.
        merged = {
            name: ColumnState.load(progress.column(name).dump())
            for name in (c.spec.name for c in columns)
        }
        with self.store.engine.connect() as conn:
            for tally in chunks.all_counts(conn, job.id):
                for name, data in tally.items():
                    merged[name].merge(ColumnState.load(data))
        progress.columns = dict(merged)
        progress.tables = {key: TableWalk(done=True) for key in groups}
        progress.sweeping = True
        with write_transaction(self.store.engine) as conn:
            jobs.checkpoint(conn, job.id, progress.dump())

    def _join(
        self, columns: list[BoundColumn], job: jobs.Job | None, started: float
    ) -> RewriteReport:
        """Work on another process's parallel job until no chunk is left to take."""
        if job is None or not JobProgress.load(job.progress).chunked:
            raise OperationFailed(
                "no parallel rotation to join: start one with `keyturn rotate --workers N`"
                + (f" (job {job.id} runs without --workers)" if job else "")
            )
        deadline = time.monotonic() + 60
        while True:  # the starting process plans the chunks right after minting
            with self.store.engine.connect() as conn:
                if chunks.is_planned(conn, job.id):
                    break
            if time.monotonic() > deadline:
                raise OperationFailed(f"job {job.id} has no chunks planned yet; try again")
            time.sleep(0.2)
        self.store.reload()
        ring = self.store.keyring
        groups = {_table_key(g): g for g in group_by_table(columns)}
        mine = self._work_chunks(groups, ring, job, coordinator=False)
        results = [state.result(name) for name, state in mine.items()]
        return RewriteReport.build(
            "rotate",
            CATEGORIES,
            results,
            dry_run=False,
            seconds=time.monotonic() - started,
            extra={"job": job.id, "new_version": job.target_version, "joined": True},
        )

    def _work_chunks(
        self,
        groups: dict[str, list[BoundColumn]],
        ring: Keyring,
        job: jobs.Job,
        *,
        coordinator: bool,
        helpers: Sequence[subprocess.Popen[bytes]] = (),
        pacing: Pacing | None = None,
    ) -> dict[str, ColumnState]:
        """Claim and rotate chunks until none is left. The coordinator also waits for
        chunks other workers hold, taking over any whose lease expires, and reaps
        its helpers as they exit, so a dead helper's chunk is taken over at once.
        ``pacing``: a walk's before the chunks, its batch size kept."""
        owner = me()
        lease = self.options.lease_seconds
        if pacing is None:
            pacing = Pacing(chunk_time=self.options.chunk_time, max_rate=self.options.max_rate)
        mine: dict[str, ColumnState] = {
            c.spec.name: ColumnState() for group in groups.values() for c in group
        }
        bar = self._chunk_bar(groups, job) if coordinator else None
        # One writer for all this worker's chunks: a chunk's last write overlaps the
        # next chunk's first read (a chunk is often one batch).
        with Pipeline(pipelined(self.store.engine)) as pipeline:
            while True:
                if coordinator and self.lock is not None:
                    self.lock.verify()
                for helper in helpers:
                    helper.poll()  # reaps an exited helper: no zombie that looks alive
                with write_transaction(self.store.engine) as conn:
                    chunk = chunks.claim(conn, job.id, owner, lease)
                    if coordinator:
                        jobs.heartbeat(conn, job.id)
                if bar is not None:
                    bar()
                if chunk is None:
                    drain(pipeline)  # our last chunk is done (or given up) before we count
                    if not coordinator:
                        return mine
                    with self.store.engine.connect() as conn:
                        if chunks.remaining(conn, job.id) == 0:
                            return mine
                    _wait_for_any(helpers, min(1.0, lease / 4))
                    continue
                group = groups[chunk.table_key]
                self._work_chunk(group, chunk, ring, job, owner, pacing, pipeline, mine)

    def _chunk_bar(
        self, groups: dict[str, list[BoundColumn]], job: jobs.Job
    ) -> Callable[[], None] | None:
        """A progress bar over all workers' rows, updated from the chunks' tallies."""
        if self.progress is None:
            return None
        total = sum(count_rows(self.store, group[0]) for group in groups.values())
        label = f"{len(groups)} table(s), {self.options.workers} worker(s)"
        advance = self.progress(label, total)
        shown = 0

        def update() -> None:
            nonlocal shown
            with self.store.engine.connect() as conn:
                done = sum(
                    max((sum(c.get("counts", {}).values()) for c in tally.values()), default=0)
                    for tally in chunks.all_counts(conn, job.id)
                )
            if done > shown:
                advance(done - shown)
                shown = done

        return update

    def _work_chunk(
        self,
        group: list[BoundColumn],
        chunk: chunks.Chunk,
        ring: Keyring,
        job: jobs.Job,
        owner: str,
        pacing: Pacing,
        pipeline: Pipeline,
        mine: dict[str, ColumnState],
    ) -> None:
        """Rotate one chunk from its cursor to its end, checkpointing it with each
        batch; its last write, its ``done`` checkpoint and its tally into ``mine``
        follow on ``pipeline`` while the worker claims its next chunk."""
        states = {c.spec.name: ColumnState.load(chunk.counts.get(c.spec.name)) for c in group}
        before = {name: ColumnState.load(state.dump()) for name, state in states.items()}
        lease = self.options.lease_seconds
        keep_backup = self.options.backup

        def tally() -> dict[str, Any]:
            return {name: state.dump() for name, state in states.items()}

        def on_batch(
            conn: Connection,
            last: PK | None,
            counts: dict[str, Counter[str]],
            applied: list[Applied],
        ) -> None:
            if keep_backup:
                backups.record(conn, job.id, applied)
            for name, batch in counts.items():
                states[name].counts.update(batch)
            chunks.checkpoint(conn, chunk, owner, lease, cursor=last, counts=tally())

        def finished(results: list[ColumnResult] | None) -> None:
            if results is not None:  # None: our lease expired and another worker continues
                for result in results:
                    states[result.column].counts[CONTENDED] += result.counts.get(CONTENDED, 0)
                with suppress(LeaseLost), write_transaction(self.store.engine) as conn:
                    chunks.checkpoint(
                        conn, chunk, owner, lease, cursor=None, counts=tally(), done=True
                    )
            for name, state in states.items():
                mine[name].merge(state.minus(before[name]))

        rewriter = TableRewriter(
            self.store.engine,
            group,
            self._deciders(ring, group, states),
            pacing=pacing,
            on_batch=on_batch,
            collect_applied=keep_backup,
            until=chunk.hi,
        )
        rewriter.queue(pipeline, finished, after=chunk.cursor or chunk.lo)

    def _file_backup(self, job_id: str) -> str | None:
        """Copy a SQLite database file before the first write (if backups are on)."""
        if not self.options.backup:
            return None
        path = backups.sqlite_file_copy(self.store.config.database, job_id)
        return str(path) if path else None

    def _mint_job(
        self, conn: Connection, job_id: str, backup_path: str | None, options: dict[str, Any]
    ) -> tuple[DataKey, jobs.Job]:
        dek = self._mint(conn)
        job = jobs.create(
            conn,
            KIND,
            dek.version,
            self.actor,
            {"backup": self.options.backup, **options},
            backup_path,
            job_id=job_id,
        )
        return dek, job

    def _mint(self, conn: Connection) -> DataKey:
        """Insert version max+1 as active and demote the current active to draining.

        Two rotations started at once both pick max+1; the version's primary key
        lets only one of them commit.
        """
        migrations.upgrade(conn)  # tables and columns newer keyturn versions added
        keystore.check_kek(conn, self.store.kek)  # the keyring is wrapped by our KEK now
        k = schema.keys.c
        top = conn.execute(select(func.max(k.version))).scalar_one()
        dek = DataKey.generate(int(top) + 1)
        conn.execute(update(schema.keys).where(k.state == ACTIVE).values(state=DRAINING))
        keystore.insert_version(
            conn, self.store.kek, self.store.keyring_id, dek, ACTIVE, self.actor
        )
        return dek

    def _run_atomic(self, columns: list[BoundColumn], started: float) -> RewriteReport:
        """Everything, minting included, in one transaction: all or nothing."""
        job_id = self.job_id or jobs.new_id()
        backup_path = self._file_backup(job_id)
        with write_transaction(self.store.engine) as conn:
            dek, job = self._mint_job(conn, job_id, backup_path, {"atomic": True})
            ring = self.store.keyring.with_active(dek)
            results = self._rotate_columns(columns, ring, job, JobProgress(), conn)
            failed = sum(r.counts.get(FAILED, 0) for r in results.values())
            if failed:
                raise OperationFailed(
                    f"--atomic: {failed} value(s) failed to decrypt; the whole rotation was "
                    "rolled back and nothing changed. Run `keyturn verify` or see "
                    "docs/ROTATION.md, 'Rows that fail'."
                )
            # The version becomes active at this commit, not at the mint: the
            # grace of the version it replaces counts from here.
            k = schema.keys.c
            conn.execute(
                update(schema.keys).where(k.version == dek.version).values(created_at=utcnow())
            )
            states = refresh_states(self.store, conn, columns=columns)
            report = self._report(conn, results, job, states, started, resumed=False)
            jobs.finish(conn, job.id, _outcome(report), report.to_dict())
        self.store.reload()
        return report

    def _rotate_columns(
        self,
        columns: list[BoundColumn],
        ring: Keyring,
        job: jobs.Job,
        progress: JobProgress,
        conn: Connection | None,
    ) -> dict[str, ColumnState]:
        """Walk every table, then sweep it; checkpoint after every batch.

        ``--workers auto`` (not resuming chunks): the walk stops once the probe
        finds idle cores, and the rest of the tables go to leased chunks."""
        states = {c.spec.name: progress.column(c.spec.name) for c in columns}
        pacing = Pacing(chunk_time=self.options.chunk_time, max_rate=self.options.max_rate)
        # --max-rate applies per worker: under it, auto does not multiply the load.
        auto = (
            self.options.auto_workers
            and self.options.workers > 1
            and conn is None
            and self.options.max_rate is None
        )
        probe = _Probe(self.options.workers - 1) if auto and not progress.chunked else None
        groups = group_by_table(columns)
        # One table on a server: the closing sweep reads the rows the walk passed
        # while the walk's last batch is written (see _walk_sweeping_ahead), and
        # the rest, from ``swept_from``, once it is.
        ahead = len(groups) == 1 and conn is None and pipelined(self.store.engine)
        swept_from: dict[str, PK] = {}
        for sweep in (False, True):
            for group in groups:
                key = _table_key(group)
                walk = progress.tables.setdefault(key, TableWalk())
                if walk.swept if sweep else walk.done:
                    continue
                bar = None
                if self.progress and not sweep:
                    bar = self.progress(group_label(group), count_rows(self.store, group[0], conn))
                    if walk.cursor is not None:
                        bar(sum(states[group[0].spec.name].counts.values()))
                rewriter_for = partial(
                    self._table_rewriter,
                    group=group,
                    ring=ring,
                    states=states,
                    on_batch=partial(self._on_batch, job, walk, states, progress),
                    pacing=pacing,
                    conn=conn,
                    bar=bar,
                    stop=probe.due if probe is not None else None,
                )
                # What a sweep ahead left is about one batch of keys: read in key order.
                rewriter = rewriter_for(sweep, None, key in swept_from)
                after = tuple(walk.cursor) if walk.cursor and not sweep else None
                if sweep:
                    results = rewriter.run(after=swept_from.get(key))
                elif ahead:
                    results, boundary = self._walk_sweeping_ahead(rewriter, after, rewriter_for)
                    if boundary is not None:
                        swept_from[key] = boundary
                else:
                    results = rewriter.run(after=after)
                for result in results:
                    states[result.column].counts[CONTENDED] += result.counts.get(CONTENDED, 0)
                if rewriter.stopped and probe is not None:
                    self._checkpoint(conn, job, progress, states)
                    self._run_chunks(
                        columns,
                        ring,
                        job,
                        progress,
                        helpers_wanted=probe.helpers,
                        pacing=pacing,
                    )
                    states = {c.spec.name: progress.column(c.spec.name) for c in columns}
                    break  # every walk is done now; the sweep follows
                if sweep:
                    walk.swept = True
                else:
                    walk.done = True
                self._checkpoint(conn, job, progress, states)
        if probe is not None and probe.decided:
            self.idle_cores = probe.idle
        return states

    def _table_rewriter(
        self,
        sweep: bool,
        until: PK | None,
        key_order: bool = False,
        *,
        group: list[BoundColumn],
        ring: Keyring,
        states: dict[str, ColumnState],
        on_batch: Callable[..., OnBatch],
        pacing: Pacing,
        conn: Connection | None,
        bar: Callable[[int], None] | None,
        stop: Callable[[], bool] | None,
    ) -> TableRewriter:
        """A walk of ``group`` onto the ring's active version, or (``sweep``) its
        closing sweep: tokens on an older version, written by app processes that
        had not yet seen the new version."""
        return TableRewriter(
            self.store.engine,
            group,
            self._deciders(ring, group, states),
            pacing=pacing,
            progress=None if sweep else bar,
            where=_stale(ring.active_version, group) if sweep else None,
            conn=conn,
            on_batch=on_batch(sweep=sweep),
            collect_applied=self.options.backup,
            until=until,
            stop=None if sweep else stop,
            key_order=key_order,
        )

    def _walk_sweeping_ahead(
        self,
        rewriter: TableRewriter,
        after: PK | None,
        rewriter_for: Callable[[bool, PK | None], TableRewriter],
    ) -> tuple[list[ColumnResult], PK | None]:
        """Walk; once every batch is read, while the last one is written, sweep the
        rows before it (the sweep's reads then overlap that write; its writes queue
        behind it). The walk's results with the sweep-ahead's, and the key after
        which the sweep is left to do (None: all of it). A walk that stopped early
        sweeps nothing yet."""
        results: list[ColumnResult] = []

        def collect(done: list[ColumnResult] | None) -> None:
            results.extend(done or ())

        with Pipeline(True) as pipeline:
            rewriter.queue(pipeline, collect, after)
            boundary = None if rewriter.stopped else rewriter.last_batch_from
            if boundary is not None:
                rewriter_for(True, boundary).queue(pipeline, collect)
            drain(pipeline)
        return results, boundary

    def _deciders(
        self, ring: Keyring, group: list[BoundColumn], states: dict[str, ColumnState]
    ) -> list[DecideBatch]:
        """Per column of ``group``: re-encrypt onto the ring's active version."""
        return [
            batch_decider(
                c,
                lambda field: _decider(
                    ring,
                    field,
                    ring.active_version,
                    states[field.spec.name],
                    self.store.legacy_reader(field.spec.name),
                    self.options.backup,
                ),
                EMPTY,
            )
            for c in group
        ]

    def _on_batch(
        self,
        job: jobs.Job,
        walk: TableWalk,
        states: dict[str, ColumnState],
        progress: JobProgress,
        *,
        sweep: bool,
    ) -> OnBatch:
        keep_backup = self.options.backup

        def on_batch(
            conn: Connection,
            last: PK | None,
            counts: dict[str, Counter[str]],
            applied: list[Applied],
        ) -> None:
            if keep_backup:
                backups.record(conn, job.id, applied)
            for name, batch in counts.items():
                if sweep:
                    # The sweep sees only stale tokens, rows the walk already
                    # counted: what it re-encrypts is reported apart, as swept.
                    for key, n in batch.items():
                        path, sep, category = key.rpartition(SEPARATOR)
                        if category == ROTATED:
                            states[name].counts[path + sep + SWEPT] += n
                else:
                    states[name].counts.update(batch)
            if not sweep and last is not None:
                walk.cursor = list(last)
            self._checkpoint(conn, job, progress, states)

        return on_batch

    def _checkpoint(
        self,
        conn: Connection | None,
        job: jobs.Job,
        progress: JobProgress,
        states: dict[str, ColumnState],
    ) -> None:
        if conn is None:
            with write_transaction(self.store.engine) as own:
                self._checkpoint(own, job, progress, states)
            return
        progress.columns = states
        # Inside the batch's transaction: a lost lock rolls the batch back.
        lock = self.lock
        guard = lock.guard() if lock is not None else None
        if lock is not None and guard is None:
            lock.verify(conn)
        saved = jobs.checkpoint(conn, job.id, progress.dump(), guard)
        if not saved and lock is not None and guard is not None:
            lock.verify(conn)  # raises if the lock was lost (else the job row was)

    def _dry_run(
        self, columns: list[BoundColumn], job: jobs.Job | None, started: float
    ) -> RewriteReport:
        top = max(v.version for v in self.store.versions)
        target = job.target_version if job and job.target_version else top + 1
        results = []
        for column in columns:
            seen = count_column(self.store, column)
            on_target = seen.by_version.get(target, 0)
            counts = {
                ROTATED: sum(seen.by_version.values()) - on_target,
                CURRENT: on_target,
                EMPTY: seen.empty,
                PLAINTEXT: seen.plaintext,
                LEGACY: seen.legacy,
            }
            results.append(ColumnResult(column.spec.name, counts))
        extra = {
            "job": job.id if job else None,
            "new_version": target,
            "resumes_job": job is not None,
        }
        return RewriteReport.build(
            "rotate",
            CATEGORIES,
            results,
            dry_run=True,
            seconds=time.monotonic() - started,
            extra=extra,
        )

    def _report(
        self,
        conn: Connection,
        states: dict[str, ColumnState],
        job: jobs.Job,
        key_states: dict[int, str],
        started: float,
        *,
        resumed: bool,
    ) -> RewriteReport:
        results = [state.result(name) for name, state in states.items()]
        draining = sorted(v for v, st in key_states.items() if st == DRAINING)
        versions = [meta for meta, _ in keystore.read_versions(conn)]
        grace, now = grace_ends(self.store.config.apps.grace_seconds, versions), utcnow()
        held = backups.jobs_by_version(conn) if draining else {}
        extra = {
            "job": job.id,
            "new_version": job.target_version,
            "resumed": resumed,
            "workers": self.workers_used,
            # --workers auto: the idle cores measured (None: done before, or not measurable).
            **({"idle_cores": self.idle_cores} if self.options.auto_workers else {}),
            "backup_file": job.backup_path,
            "key_states": {str(v): s for v, s in key_states.items()},
            "still_in_use": draining,
            # Per draining version: the jobs whose backups hold its tokens (prune
            # those), and until when app processes may still seal under it.
            "draining": {
                str(v): {
                    "backup_jobs": held.get(v, []),
                    "grace_until": grace[v].isoformat() + "Z" if grace[v] > now else None,
                }
                for v in draining
            },
        }
        return RewriteReport.build(
            "rotate",
            CATEGORIES,
            results,
            dry_run=False,
            seconds=time.monotonic() - started,
            extra=extra,
        )


def most_auto_workers() -> int:
    """How many workers ``--workers auto`` may use at most: one per core, at most 8
    (more chunks' claims contend)."""
    return min(8, os.cpu_count() or 1)


def _tokens_in(spec: ColumnSpec, value: Any) -> list[tuple[ColumnSpec, str]]:
    """The kt1 tokens a value holds, each with the spec it opens under: the value
    itself, or a JSON document's token fields (none if it is not JSON: the walk
    reports it)."""
    if not spec.json_fields:
        return [(spec, value)] if tokens.version_of(value) is not None else []
    fields = spec.fields()
    try:
        found = locate(value, [path for path, _ in fields])
    except InvalidDocument:
        return []
    return [
        (field, v)
        for (_, field), spans in zip(fields, found, strict=True)
        for _, _, v in spans
        if isinstance(v, str) and tokens.version_of(v) is not None
    ]


def _outcome(report: RewriteReport) -> str:
    """A finished job's state: failed if any row failed (the CLI exits 1 for it)."""
    return jobs.FAILED if report.failed else jobs.SUCCEEDED


def _decider(
    ring: Keyring,
    column: BoundColumn,
    target: int,
    state: ColumnState,
    reader: LegacyReader | None,
    backup: bool = False,
) -> DecideBatch:
    """Re-encrypt a batch of ``column`` onto version ``target``; ``backup``: keep
    what the tokens decoded to, for the backup (keyring.Resealed)."""
    spec = column.spec
    current = tokens.header(target)
    fixed = spec.context(()) if spec.bind == "column" else None

    def classify(pk: PK, value: Any) -> str:
        """The category of a value that is not re-encrypted."""
        if value is None or value == "":
            return EMPTY
        if not isinstance(value, str | bytes):
            state.fail(pk)
            return FAILED
        if isinstance(value, str) and value.startswith(current):
            return CURRENT
        if isinstance(value, bytes) or not value.startswith("kt1:"):  # bytes: not UTF-8
            if reader is not None and reader.recognises(value):
                return LEGACY
            return UNKNOWN if looks_encrypted(value) else PLAINTEXT
        if tokens.version_of(value) is None:
            return PLAINTEXT  # text that merely starts with "kt1:"
        state.fail(pk)  # a token that does not decrypt
        return FAILED

    def decide(pks: Sequence[PK], values: Sequence[Any]) -> tuple[list[str], list[str | None]]:
        news: list[str | None]
        if fixed is not None:
            # Every value at once: the keyring leaves what is not an older token.
            news = ring.reencrypt_many(values, fixed, leave=target, opened=backup)
            if None not in news:
                return [ROTATED] * len(values), news  # the walk's usual batch
        else:
            todo = [
                j
                for j, v in enumerate(values)
                if isinstance(v, str) and v.startswith("kt1:") and not v.startswith(current)
            ]
            contexts = [spec.context(pks[j]) for j in todo]
            fresh = ring.reencrypt_many([values[j] for j in todo], contexts)
            if None in fresh:
                _reseal_old_contexts(ring, spec, pks, values, todo, contexts, fresh)
            news = [None] * len(values)
            for j, new in zip(todo, fresh, strict=True):
                news[j] = new
        categories = [
            ROTATED if new is not None else classify(pk, value)
            for pk, value, new in zip(pks, values, news, strict=True)
        ]
        return categories, news

    return decide


def _reseal_old_contexts(
    ring: Keyring,
    spec: ColumnSpec,
    pks: Sequence[PK],
    values: Sequence[Any],
    todo: list[int],
    contexts: list[str],
    fresh: list[str | None],
) -> None:
    """Tokens keyturn 0.1 sealed under an unescaped row context (a key part with
    ``,`` or ``\\``): opened with it, re-sealed under the row's context now."""
    for i, j in enumerate(todo):
        old = spec.old_context(pks[j]) if fresh[i] is None else None
        if old is not None:
            with suppress(InvalidToken, UnknownKeyVersion):  # else classified as failed
                fresh[i] = ring.encrypt(ring.decrypt(values[j], old), contexts[i])


#: How long the first worker of ``--workers auto`` runs alone while idle cores are measured.
PROBE_SECONDS = 0.5
# --workers auto starts helpers only for at least this much work left, at the
# walk's pace so far: a helper takes about half a second to start, and a rotation
# with less left ran slower with one than alone (docs/PERFORMANCE.md).
HELPERS_PAY_SECONDS = 1.0


class IdleCores:
    """The cores this machine leaves idle from now on, from /proc/stat (Linux): what
    a helper worker would get. Counts every process, a local database server too."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._times = _cpu_times()

    def seconds(self) -> float:
        return time.monotonic() - self._started

    def idle(self) -> float | None:
        """Idle cores on average since created; None where it cannot be measured."""
        now = _cpu_times()
        if self._times is None or now is None or now[1] <= self._times[1]:
            return None
        busy, total = now[0] - self._times[0], now[1] - self._times[1]
        return (os.cpu_count() or 1) * (1 - busy / total)


class _Probe:
    """``--workers auto``: decides once, after the sequential walk has run for
    PROBE_SECONDS, how many helpers the idle cores make room for (``due``: stop
    the walk and go parallel)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.cores = IdleCores()
        self.decided = False
        self.idle: float | None = None
        self.helpers = 0

    def due(self) -> bool:
        if self.decided or self.cores.seconds() < PROBE_SECONDS:
            return False
        self.decided = True
        idle = self.cores.idle()
        self.idle = None if idle is None else round(idle, 2)
        self.helpers = min(self.most, int(idle + 0.2)) if idle is not None else 0
        return self.helpers > 0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine in clock ticks, or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are idle


def _wait_for_any(helpers: Sequence[subprocess.Popen[bytes]], seconds: float) -> None:
    """Sleep ``seconds``, or until a running helper exits: a helper exits when it
    finds no chunk left to claim, so the chunks may all be done then."""
    deadline = time.monotonic() + seconds
    running = [h for h in helpers if h.poll() is None]
    while time.monotonic() < deadline:
        if any(h.poll() is not None for h in running):
            return
        time.sleep(0.02)


def _stale(
    target: int, group: list[BoundColumn]
) -> Callable[[list[Column[Any]]], ColumnElement[bool]]:
    """The rows holding a token under another version than ``target``: for a JSON
    column, documents holding a ``"kt1:`` string that is not ``"kt1:<target>:``."""

    def where(values: list[Column[Any]]) -> ColumnElement[bool]:
        return or_(
            *(
                _stale_document(text_of(v), target)
                if column.spec.json_fields
                else and_(text_of(v).like("kt1:%"), not_(text_of(v).like(f"kt1:{target}:%")))
                for v, column in zip(values, group, strict=True)
            )
        )

    return where


def _stale_document(document: Any, target: int) -> ColumnElement[bool]:
    """A ``"kt1:`` string is left in the document once every ``"kt1:<target>:`` is
    taken out: one replace and a scan (every database has both), where counting
    both kinds took two replaces, four times as long on 274-character documents."""
    return and_(
        document.like('%"kt1:%'),
        func.replace(document, f'"kt1:{target}:', "").like('%"kt1:%'),
    )


def _table_key(group: list[BoundColumn]) -> str:
    """A group's name in its job's chunks: the table and key, and a digest of its
    ``where`` filter (two filters on one table are walked apart)."""
    spec = group[0].spec
    key = f"{spec.table}({','.join(spec.primary_key)})"
    if spec.where:
        digest = hashlib.sha256(json.dumps(spec.where).encode()).hexdigest()[:12]
        key += f" where #{digest}"
    return key
