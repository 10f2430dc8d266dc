"""What the admin page shows beside ``status``: jobs with their backups, the audit
log's state and latest entries, and the last ``verify``; never a key or a secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyturn.engine import backups, jobs
from keyturn.errors import AuditError
from keyturn.keys.audit import Entry
from keyturn.store import Store

#: How many verify entries the page looks through for the last finished one.
_VERIFY_LOOKBACK = 20


@dataclass(frozen=True)
class JobSummary:
    """A job as the page lists it: its state, report totals and backups."""

    id: str
    kind: str
    state: str
    target_version: int | None
    created_at: str
    updated_at: str
    created_by: str
    totals: dict[str, int]
    #: Backed-up tokens (keyturn_backup_batches) per key version they use.
    backups: dict[int, int]
    #: Database file copies (SQLite) kept for the job.
    file_copies: int
    #: Progress of a running job, per column: the counts checkpointed so far.
    progress: dict[str, dict[str, int]]
    #: Seconds since the job started (for a running job's rows/s).
    elapsed_seconds: float = 0.0

    @property
    def has_backups(self) -> bool:
        return bool(self.backups) or self.file_copies > 0


@dataclass(frozen=True)
class AuditState:
    """The audit log's verification, its signed head (to keep elsewhere), the latest
    entries, newest first."""

    entries: int
    ok: bool
    problems: tuple[str, ...]
    head: str | None
    latest: tuple[Entry, ...]


@dataclass(frozen=True)
class Overview:
    jobs: tuple[JobSummary, ...]
    audit: AuditState
    #: The last successful ``keyturn verify``: when, and failed values per column.
    last_verify: dict[str, Any] | None


def overview(store: Store, *, job_limit: int = 20, audit_limit: int = 10) -> Overview:
    """Jobs (newest first), their backups, the audit log and the last verify."""
    with store.engine.connect() as conn:
        held = backups.versions_by_job(conn)
    listed = jobs.list_all(store.engine)[-job_limit:]
    summaries = tuple(
        JobSummary(
            job.id,
            job.kind,
            job.state,
            job.target_version,
            job.created_at.isoformat() + "Z",
            job.updated_at.isoformat() + "Z",
            job.created_by,
            _totals(job.report),
            dict(sorted(held.get(job.id, {}).items())),
            len(backups.file_copies(store.config.database, job.id)),
            jobs.counts_by_column(job) if job.state == jobs.RUNNING else {},
            jobs.seconds_running(job),
        )
        for job in reversed(listed)
    )
    return Overview(summaries, _audit_state(store, audit_limit), _last_verify(store))


def _totals(report: dict[str, Any] | None) -> dict[str, int]:
    """A report's non-zero counts (``rotated``, ``failed``, …)."""
    if not report:
        return {}
    skip = {"seconds", "new_version", "resumed", "dry_run"}
    return {
        k: v
        for k, v in report.items()
        if isinstance(v, int) and not isinstance(v, bool) and v and k not in skip
    }


def _audit_state(store: Store, limit: int) -> AuditState:
    check = store.audit.verify()
    try:
        head: str | None = store.audit.head().to_text()
    except AuditError:
        head = None
    latest = tuple(store.audit.latest(limit))
    return AuditState(check.entries, check.ok, check.problems, head, latest)


def _last_verify(store: Store) -> dict[str, Any] | None:
    for entry in store.audit.latest(_VERIFY_LOOKBACK, "verify"):
        if entry.details.get("outcome") in ("succeeded", "failed"):
            return {"at": entry.at, "by": entry.actor, **entry.details}
    return None
