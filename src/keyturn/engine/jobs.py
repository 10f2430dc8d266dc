"""Rotation jobs in ``keyturn_jobs``: create, claim (a lease), checkpoint, finish.

The database is the coordinator: a job's ``owner`` and ``heartbeat_at`` say
who works on it. A second process refuses to run a job whose owner is alive;
an owner that is dead (a process on this host that no longer exists, or no
checkpoint for ``LEASE_SECONDS``) is taken over, which is how a killed
rotation is resumed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, TextClause, select, update

from keyturn.db import schema
from keyturn.db.database import bound_actor, has_table, raw_columns, stored_datetime, utcnow
from keyturn.db.locking import local_owner_state, me
from keyturn.errors import JobInProgress, JobNotFound

RUNNING, SUCCEEDED, FAILED, RESTORED = "running", "succeeded", "failed", "restored"
LEASE_SECONDS = 60


@dataclass(frozen=True)
class Job:
    """One row of ``keyturn_jobs``."""

    id: str
    kind: str
    state: str
    target_version: int | None
    created_at: datetime
    updated_at: datetime
    created_by: str
    owner: str | None
    heartbeat_at: datetime | None
    options: dict[str, Any]
    progress: dict[str, Any]
    report: dict[str, Any] | None
    backup_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "target_version": self.target_version,
            "created_at": self.created_at.isoformat() + "Z",
            "updated_at": self.updated_at.isoformat() + "Z",
            "created_by": self.created_by,
            "owner": self.owner,
            "backup_path": self.backup_path,
            "report": self.report,
        }


def counts_by_column(job: Job) -> dict[str, dict[str, int]]:
    """A job's checkpointed counts per column (outcome -> values; a JSON field's
    outcome is ``<path>\t<outcome>``), as its progress holds them."""
    columns = job.progress.get("columns", {})
    return {
        name: {outcome: int(n) for outcome, n in (tally.get("counts") or {}).items()}
        for name, tally in columns.items()
        if isinstance(tally, dict)
    }


def seconds_running(job: Job) -> float:
    """Seconds since the job started (0 for a clock behind its start)."""
    return max((utcnow() - job.created_at).total_seconds(), 0.0)


def _row_to_job(row: Any) -> Job:
    """A job as stored. A field edited into something unreadable is read as empty
    (progress: the walk restarts, harmlessly, by compare-and-swap) and the
    report says it was corrupt: a damaged row is reported, never a crash."""
    never = datetime(1970, 1, 1)
    created = stored_datetime(row.created_at) or never
    report = _json(row.report, None)
    return Job(
        row.id,
        row.kind,
        row.state,
        row.target_version,
        created,
        stored_datetime(row.updated_at) or created,
        row.created_by,
        row.owner,
        stored_datetime(row.heartbeat_at),
        _json(row.options, {}) or {},
        _json(row.progress, {}) or {},
        report if report is not _CORRUPT else {"corrupt": "the stored report is not JSON"},
        row.backup_path,
    )


_CORRUPT = object()


def _json(text: Any, empty: Any) -> Any:
    """A JSON field of a job row; ``empty`` if NULL, _CORRUPT (or {} where a dict is
    needed) if it does not parse as the object it should be."""
    if not text:
        return empty
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return _CORRUPT if empty is None else {}
    if not isinstance(value, dict):
        return _CORRUPT if empty is None else {}
    return value


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def create(
    conn: Connection,
    kind: str,
    target_version: int | None,
    created_by: str,
    options: dict[str, Any],
    backup_path: str | None = None,
    *,
    job_id: str | None = None,
) -> Job:
    now = utcnow()
    job_id = job_id or new_id()
    conn.execute(
        schema.jobs.insert().values(
            id=job_id,
            kind=kind,
            state=RUNNING,
            target_version=target_version,
            created_at=now,
            updated_at=now,
            created_by=bound_actor(created_by),
            owner=me(),
            heartbeat_at=now,
            options=json.dumps(options),
            progress="{}",
            backup_path=backup_path,
        )
    )
    return get(conn, job_id)


def get(conn: Connection, job_id: str) -> Job:
    row = conn.execute(select(*raw_columns(schema.jobs)).where(schema.jobs.c.id == job_id)).first()
    if row is None:
        raise JobNotFound(f"no job {job_id!r}; `keyturn jobs` lists them")
    return _row_to_job(row)


def unfinished(conn: Connection, kind: str) -> Job | None:
    """The running job of this kind, if one was started and not finished."""
    j = schema.jobs.c
    row = conn.execute(
        select(*raw_columns(schema.jobs))
        .where(j.kind == kind, j.state == RUNNING)
        .order_by(j.created_at)
    ).first()
    return _row_to_job(row) if row is not None else None


def all_jobs(conn: Connection) -> list[Job]:
    rows = conn.execute(select(*raw_columns(schema.jobs)).order_by(schema.jobs.c.created_at)).all()
    return [_row_to_job(r) for r in rows]


def _has_jobs(conn: Connection) -> bool:
    return has_table(conn, schema.jobs.name)


def list_all(engine: Engine) -> list[Job]:
    """Every job, oldest first; none on a database that never had the table."""
    with engine.connect() as conn:
        return all_jobs(conn) if _has_jobs(conn) else []


def lookup(engine: Engine, job_id: str) -> Job:
    """The job ``job_id``, or JobNotFound."""
    with engine.connect() as conn:
        if not _has_jobs(conn):
            raise JobNotFound(f"no job {job_id!r}; `keyturn jobs` lists them")
        return get(conn, job_id)


def find_unfinished(engine: Engine, kind: str) -> Job | None:
    """:func:`unfinished`, None on a database that never had the table."""
    with engine.connect() as conn:
        return unfinished(conn, kind) if _has_jobs(conn) else None


def running_elsewhere(engine: Engine, kind: str) -> Job | None:
    """The unfinished job of ``kind`` whose owner (another process) may still work on it."""
    job = find_unfinished(engine, kind)
    return job if job is not None and owner_alive(job) else None


def dead_here(owner: str | None) -> bool:
    """Whether ``owner`` (host:pid) is a process on this host that no longer runs
    (gone, or a zombie its parent has not reaped)."""
    return local_owner_state(owner) is False


def owner_alive(job: Job, now: datetime | None = None) -> bool:
    """Whether the job's owner may still be working on it."""
    if not job.owner or job.owner == me():
        return False
    local = local_owner_state(job.owner)
    if local is not None:
        return local
    beat = job.heartbeat_at or job.updated_at
    return (now or utcnow()) - beat < timedelta(seconds=LEASE_SECONDS)


def claim(conn: Connection, job: Job) -> None:
    """Take over ``job`` for this process, or JobInProgress if its owner is alive."""
    if owner_alive(job):
        raise JobInProgress(
            f"job {job.id} is being run by {job.owner} (last checkpoint "
            f"{job.heartbeat_at}Z); wait for it to finish, or if that process is gone, "
            f"retry after {LEASE_SECONDS} s"
        )
    j = schema.jobs.c
    cond = j.owner.is_(None) if job.owner is None else j.owner == job.owner
    taken = conn.execute(
        update(schema.jobs).where(j.id == job.id, cond).values(owner=me(), heartbeat_at=utcnow())
    ).rowcount
    if taken != 1:
        raise JobInProgress(f"job {job.id} was just claimed by another process")


def checkpoint(
    conn: Connection,
    job_id: str,
    progress: dict[str, Any],
    guard: ColumnElement[bool] | TextClause | None = None,
) -> bool:
    """Save a job's progress; False if no row was written (no such job, or ``guard``,
    a condition such as the keyring lock's, was false)."""
    now = utcnow()
    query = update(schema.jobs).where(schema.jobs.c.id == job_id)
    if guard is not None:
        query = query.where(guard)
    values = {"progress": json.dumps(progress), "updated_at": now, "heartbeat_at": now}
    return conn.execute(query.values(**values)).rowcount == 1


def heartbeat(conn: Connection, job_id: str) -> None:
    """Tell other processes the job's owner is alive (between checkpoints)."""
    conn.execute(
        update(schema.jobs).where(schema.jobs.c.id == job_id).values(heartbeat_at=utcnow())
    )


def finish(conn: Connection, job_id: str, state: str, report: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"state": state, "updated_at": utcnow(), "owner": None}
    if report is not None:
        values["report"] = json.dumps(report, default=str)
    conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(**values))
