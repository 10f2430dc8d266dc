"""The keyring lock: one keyturn operation that changes keys, jobs or backups at a time.

The database coordinates, so the lock holds across processes and hosts:

- PostgreSQL and MariaDB: a session-level lock (``pg_try_advisory_lock``,
  ``GET_LOCK``) held on a connection of its own for the whole operation. The
  server drops it when that session ends, so a killed holder releases it at once.
- SQLite: the ``keyturn_lock`` row, taken in a write transaction. A holder on
  this host that no longer runs (gone, a zombie, or its pid reused by a newer
  process) is dead; one on another host is alive while it renews its heartbeat.

On every backend the ``keyturn_lock`` row names the holder (operation, job,
host:pid, since), which is what a refused operation reports.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from keyturn.db import schema
from keyturn.db.database import has_table, utcnow, write_transaction
from keyturn.errors import KeyringBusy

LOCK_NAME = "keyring"
#: SQLite only: how often a holder renews its heartbeat, and when a holder on
#: another host whose heartbeat stopped counts as dead.
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0
_POLL_SECONDS = 0.25
# How long a refusal waits for a holder that has the session lock to name itself.
HOLDER_ROW_SECONDS = 0.5


def me() -> str:
    """This process as an owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name, or None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(fields: list[bytes]) -> float | None:
    """When the process started (epoch seconds), from its stat fields and the boot time."""
    try:
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def local_owner_state(owner: str | None, since: datetime | None = None) -> bool | None:
    """For an owner ``host:pid`` on this host: whether that process still runs
    (False if gone, a zombie, or started after ``since``, i.e. a reused pid).
    None if the owner is on another host or unreadable."""
    if not owner:
        return None
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc to ask: the process exists
    if fields[:1] == [b"Z"]:
        return False  # a zombie its parent has not reaped
    if since is not None:
        started = _start_time(fields)
        # A process that started after ``since`` (naive UTC) cannot have taken the lock then.
        if started is not None and started > since.replace(tzinfo=UTC).timestamp() + 1.0:
            return False
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds the keyring lock, as the ``keyturn_lock`` row says."""

    operation: str
    job: str | None
    owner: str
    since: datetime
    heartbeat_at: datetime | None

    def describe(self) -> str:
        job = f" (job {self.job})" if self.job else ""
        return f"{self.operation}{job} by {self.owner} since {self.since:%Y-%m-%d %H:%M:%S}Z"

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "job": self.job,
            "owner": self.owner,
            "since": self.since.isoformat() + "Z",
        }


def _busy(holder: Holder | None, operation: str) -> KeyringBusy:
    who = holder.describe() if holder else "another keyturn operation that is just starting"
    return KeyringBusy(
        f"{operation} refused: the keyring is locked by {who}; wait for it to finish, "
        "or pass --wait SECONDS to queue (docs/ROTATION.md, 'What may run at the same time')",
        holder.to_dict() if holder else None,
    )


def read_holder(conn: Connection) -> Holder | None:
    """The holder the lock row names (it may be dead; see :class:`KeyringLock`)."""
    if not has_table(conn, schema.lock.name):
        return None
    row = conn.execute(select(schema.lock).where(schema.lock.c.name == LOCK_NAME)).first()
    if row is None or row.owner is None or row.since is None:
        return None
    return Holder(row.operation or "?", row.job_id, row.owner, row.since, row.heartbeat_at)


def _ensure_table(engine: Engine) -> None:
    with engine.connect() as conn:
        if has_table(conn, schema.lock.name):
            return
    try:
        with write_transaction(engine) as conn:
            schema.metadata.create_all(conn, tables=[schema.lock])
    except SQLAlchemyError:  # another process created it at the same moment
        with engine.connect() as conn:
            if not has_table(conn, schema.lock.name):
                raise


class KeyringLock:
    """The keyring lock for one operation; a context manager, released on exit.

    ``acquire()`` raises :class:`KeyringBusy` naming the holder, after waiting
    up to ``wait`` seconds for it to finish.
    """

    def __init__(self, engine: Engine, operation: str, job: str | None = None) -> None:
        self.engine = engine
        self.operation = operation
        self.job = job
        self.owner = me()[:255]
        self._session: Connection | None = None
        self._session_id: int | None = None  # the lock session's id on the server
        self._key: Any = None
        self._held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"KeyringLock(operation={self.operation!r}, held={self._held})"

    def acquire(self, wait: float = 0.0) -> KeyringLock:
        _ensure_table(self.engine)
        deadline = time.monotonic() + wait
        while True:
            try:
                self._try()
                return self
            except KeyringBusy:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_POLL_SECONDS)

    def _holder_named(self) -> Holder | None:
        """The holder, giving one that has just taken the lock a moment to write its
        row (it takes the session lock first), so the refusal can name it."""
        deadline = time.monotonic() + HOLDER_ROW_SECONDS
        while True:
            with self.engine.connect() as conn:
                holder = read_holder(conn)
            if holder is not None or time.monotonic() >= deadline:
                return holder
            time.sleep(0.02)

    def _try(self) -> None:
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            with write_transaction(self.engine) as conn:
                holder = read_holder(conn)
                if holder is not None and _alive_sqlite(holder):
                    raise _busy(holder, self.operation)
                self._write_row(conn)
            self._held = True
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return
        session = self.engine.connect()
        try:
            key = _lock_key(session)
            got, self._session_id = session.execute(_TRY[dialect], {"key": key}).one()
            session.commit()  # the lock belongs to the session; no transaction stays open
            self._key = key
        except BaseException:
            session.invalidate()
            session.close()
            raise
        if got != 1 and got is not True:
            session.close()
            raise _busy(self._holder_named(), self.operation)
        self._session = session
        try:
            with write_transaction(self.engine) as conn:
                self._write_row(conn)
        except BaseException:
            self.release()
            raise
        self._held = True

    def _write_row(self, conn: Connection) -> None:
        now = utcnow()
        values = {
            "operation": self.operation,
            "job_id": self.job,
            "owner": self.owner,
            "since": now,
            "heartbeat_at": now,
        }
        lk = schema.lock.c
        if conn.execute(update(schema.lock).where(lk.name == LOCK_NAME).values(**values)).rowcount:
            return
        conn.execute(schema.lock.insert().values(name=LOCK_NAME, **values))

    def _update_row(self, **values: Any) -> None:
        """Change the lock row, if it still names this holder."""
        lk = schema.lock.c
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(schema.lock)
                .where(lk.name == LOCK_NAME, lk.owner == self.owner)
                .values(**values)
            )

    def guard(self) -> TextClause | None:
        """A condition true, in any transaction on this database, exactly while the
        lock session holds the lock (PostgreSQL: ``pg_locks``; MariaDB:
        ``IS_USED_LOCK``). A checkpoint's UPDATE carries it, so each batch checks
        the lock without a round trip of its own. None on SQLite (:meth:`verify`)."""
        if self._session is None or self._session_id is None:
            return None
        if self.engine.dialect.name == "postgresql":
            key = self._key & 0xFFFF_FFFF_FFFF_FFFF
            return _HELD_PG.bindparams(
                kt_holder=self._session_id, kt_hi=key >> 32, kt_lo=key & 0xFFFF_FFFF
            )
        return _HELD_MYSQL.bindparams(kt_holder=self._session_id, kt_key=self._key)

    def verify(self, conn: Connection | None = None) -> None:
        """KeyringBusy unless this process still holds the lock: its lock session is
        alive (a session lock lasts as long as its session), or, on SQLite, the row
        still names it, read on ``conn`` if given: inside a batch's transaction on
        SQLite another connection could wait for that very transaction. Called
        before each checkpoint of a long operation."""
        lost = KeyringBusy(
            f"{self.operation} stopped: the keyring lock was lost (its database session "
            "ended); the last batch was rolled back. Run it again to resume"
        )
        if self._session is not None:
            try:
                self._session.execute(text("SELECT 1"))
                self._session.commit()
            except SQLAlchemyError:
                raise lost from None
            return
        if not self._held:
            raise lost
        if conn is None:
            with self.engine.connect() as own:
                holder = read_holder(own)
        else:
            holder = read_holder(conn)
        if holder is None or holder.owner != self.owner:
            raise lost

    def set_job(self, job: str) -> None:
        """Name the job the holder works on (a rotation learns it after minting)."""
        self.job = job
        self._update_row(job_id=job)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with suppress(SQLAlchemyError):  # the next beat tries again; the lock is the row
                self._update_row(heartbeat_at=utcnow())

    def release(self) -> None:
        """Clear the row and drop the lock; safe to call twice."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._held or self._session is not None:
            # If this fails, the row names a dead holder; the next taker overwrites it.
            with suppress(SQLAlchemyError):
                self._update_row(operation=None, job_id=None, owner=None, since=None)
        self._held = False
        session, self._session = self._session, None
        if session is not None:
            try:
                session.execute(_RELEASE[session.dialect.name], {"key": _lock_key(session)})
                session.commit()
            except SQLAlchemyError:
                session.invalidate()  # closing the session drops the lock on the server
            finally:
                session.close()

    def __enter__(self) -> KeyringLock:
        if not self._held:
            self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


_TRY = {  # whether the lock was taken, and by which server session
    "postgresql": text("SELECT pg_try_advisory_lock(:key), pg_backend_pid()"),
    "mysql": text("SELECT GET_LOCK(:key, 0), CONNECTION_ID()"),
    "mariadb": text("SELECT GET_LOCK(:key, 0), CONNECTION_ID()"),
}
# A bigint advisory lock shows in pg_locks as its high and low 32 bits.
_HELD_PG = text(
    "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = :kt_holder AND objsubid = 1 AND classid::bigint = :kt_hi "
    "AND objid::bigint = :kt_lo AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()))"
)
_HELD_MYSQL = text("IS_USED_LOCK(:kt_key) = :kt_holder")
_RELEASE = {
    "postgresql": text("SELECT pg_advisory_unlock(:key)"),
    "mysql": text("SELECT RELEASE_LOCK(:key)"),
    "mariadb": text("SELECT RELEASE_LOCK(:key)"),
}


def _lock_key(conn: Connection) -> Any:
    """PostgreSQL's advisory locks are per database already; MariaDB's GET_LOCK names
    are per server, so the name includes the database's."""
    if conn.dialect.name == "postgresql":
        digest = hashlib.sha256(b"keyturn keyring lock").digest()
        return int.from_bytes(digest[:8], "big", signed=True)
    database = conn.execute(text("SELECT DATABASE()")).scalar() or ""
    return "keyturn:" + hashlib.sha256(str(database).encode()).hexdigest()[:40]


def _alive_sqlite(holder: Holder) -> bool:
    local = local_owner_state(holder.owner, holder.since)
    if local is not None:
        return local
    beat = holder.heartbeat_at or holder.since
    return utcnow() - beat < timedelta(seconds=STALE_SECONDS)
