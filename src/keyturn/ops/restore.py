"""A rotation job's backups: ``keyturn restore`` puts its replaced tokens back,
``keyturn prune`` drops them (and the database file copy) for good."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from keyturn._core.keyring import RETIRED
from keyturn.db.database import write_transaction
from keyturn.db.locking import KeyringLock
from keyturn.engine import backups, jobs
from keyturn.keys import keystore
from keyturn.ops.lifecycle import refresh_states
from keyturn.store import Store


@dataclass(frozen=True)
class PruneResult:
    """What ``prune`` did: backed-up tokens dropped, files removed or refused, states."""

    job: str
    dropped: int
    removed_files: tuple[str, ...]
    refused_files: tuple[str, ...]
    states: dict[int, str]
    newly_retired: tuple[int, ...]


def prune_job(
    store: Store, job_id: str, actor: str = "library", *, wait: float = 0.0
) -> PruneResult:
    """Drop a job's backed-up tokens and its database file copies; retire what is unused.

    Files are found by keyturn's own naming beside the database. A path the
    job row names that is not such a file is refused and reported, never
    deleted (the database is not trusted to name files).
    """
    job = jobs.lookup(store.engine, job_id)
    with KeyringLock(store.engine, "prune", job.id).acquire(wait):
        with store.audit.transaction() as conn:
            before = {m.version: m.state for m, _ in keystore.read_versions(conn)}
            dropped = backups.prune(conn, job.id)
            states = refresh_states(store, conn)
            store.audit.append(conn, actor, "prune", {"job": job.id, "dropped": dropped})
        ours = backups.file_copies(store.config.database, job.id)
        for path in ours:
            path.unlink(missing_ok=True)
        named = job.backup_path
        refused: tuple[str, ...] = ()
        if named and not any(str(p) == named for p in ours) and os.path.lexists(named):
            refused = (named,)
    retired = tuple(v for v, st in states.items() if st == RETIRED and before.get(v) != RETIRED)
    return PruneResult(job.id, dropped, tuple(map(str, ours)), refused, states, retired)


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` did: tokens put back, and rows left as they were (and why)."""

    job: str
    restored: int
    changed_since: int
    skipped_unconfigured: int
    skipped_corrupt: int

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "job"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_job(
    store: Store,
    job_id: str,
    *,
    wait: float = 0.0,
    before_write: Callable[[], None] | None = None,
) -> RestoreResult:
    """Put back the tokens a job replaced (by compare-and-swap), under the keyring lock."""
    job = jobs.lookup(store.engine, job_id)
    with KeyringLock(store.engine, "restore", job.id).acquire(wait):
        if before_write is not None:
            before_write()
        counts = backups.restore(store.engine, job.id, store.bound_columns())
        with write_transaction(store.engine) as conn:
            jobs.finish(conn, job.id, jobs.RESTORED)
            refresh_states(store, conn)
    return RestoreResult(job.id, **counts)
