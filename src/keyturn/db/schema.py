"""keyturn's own tables, created in the application's database by ``keyturn init``."""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
)

metadata = MetaData()

meta = Table(
    "keyturn_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

keys = Table(
    "keyturn_keys",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    # The DEK wrapped under the KEK; NULL once the version is destroyed.
    Column("wrapped_dek", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("retired_at", DateTime, nullable=True),
    Column("created_by", String(255), nullable=False),
    # Which KEK wrapped it (a one-way identifier, never the KEK).
    Column("kek_id", String(255), nullable=True),
    CheckConstraint(
        "state IN ('active', 'draining', 'retired', 'destroyed')", name="keyturn_keys_state"
    ),
)

# At most one active version, enforced by the database where it has partial
# indexes; elsewhere the keystore checks it on every load. Plain DDL, the same on
# both: an Index with dialect arguments would import those dialects for every
# command (bench/cli_start.py).
_ONE_ACTIVE = DDL(  # type: ignore[no-untyped-call]
    "CREATE UNIQUE INDEX IF NOT EXISTS keyturn_keys_one_active "
    "ON keyturn_keys (state) WHERE state = 'active'"
)
event.listen(
    keys,
    "after_create",
    _ONE_ACTIVE.execute_if(dialect=("sqlite", "postgresql")),  # type: ignore[arg-type]
)

# One row per rotation job; ``progress`` (JSON) is checkpointed in the same
# transaction as each batch of rows, so a killed job resumes where it stopped.
jobs = Table(
    "keyturn_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # running | succeeded | failed | restored
    Column("target_version", Integer, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("created_by", String(255), nullable=False),
    # host:pid of the process working on it, and when it last checkpointed.
    Column("owner", String(255), nullable=True),
    Column("heartbeat_at", DateTime, nullable=True),
    Column("options", Text, nullable=False, default="{}"),
    Column("progress", Text, nullable=False, default="{}"),
    Column("report", Text, nullable=True),
    Column("backup_path", Text, nullable=True),
)

# A parallel rotation's primary-key ranges (chunks), leased to workers: a worker
# holds a chunk while ``lease_until`` is in the future and renews it with every
# batch; a killed worker's chunk is taken over once its lease has expired, and
# continues from ``cursor``. ``counts`` is the chunk's per-column tally (JSON).
chunks = Table(
    "keyturn_chunks",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("table_key", String(255), primary_key=True),
    Column("chunk_no", Integer, primary_key=True, autoincrement=False),
    Column("lo", Text, nullable=True),  # JSON primary key, exclusive; NULL: the start
    Column("hi", Text, nullable=True),  # JSON primary key, inclusive; NULL: the end
    Column("state", String(16), nullable=False),  # pending | running | done
    Column("owner", String(255), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Column("cursor", Text, nullable=True),
    Column("counts", Text, nullable=False, default="{}"),
)

#: The longest table or column name a backup row holds (a JSON field's: doc$.apiKey).
BACKUP_NAME = 128

# The values a job replaced (ciphertext only), one row per batch and column:
# ``data`` is a pack (keyturn._core.packs) holding each row's primary key, the
# value replaced and a fingerprint of the value written, so a restore is itself
# a compare-and-swap; ``versions`` counts the pack's tokens per key version (JSON),
# so what a backup keeps in use is known without unpacking it.
backup_batches = Table(
    "keyturn_backup_batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False, index=True),
    Column("table_name", String(BACKUP_NAME), nullable=False),
    Column("column_name", String(BACKUP_NAME), nullable=False),
    Column("value_count", Integer, nullable=False),
    Column("versions", Text, nullable=False),
    Column("data", LargeBinary(2**32 - 1), nullable=False),  # MySQL: LONGBLOB
)

# The tamper-evident audit log: each entry's ``mac`` is an HMAC over its fields
# and the previous entry's mac, under a key only a KEK holder has (keys/audit.py).
# ``at`` is ISO text so the MAC'd value survives every backend unchanged.
audit = Table(
    "keyturn_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("details", JSON, nullable=False),
    Column("mac", String(64), nullable=False),
)

# Bearer tokens of the admin HTTP API: only a SHA-256 of each token is kept,
# with a MAC over the record under a key derived from the audit key (a row
# inserted by anyone without the KEK is refused); NULL once revoked.
api_tokens = Table(
    "keyturn_api_tokens",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("revoked_at", DateTime, nullable=True),
    Column("mac", String(64), nullable=True),
)

# The keyring lock's holder (db/locking.py): one keyturn operation that changes
# keys, jobs or backups at a time. On PostgreSQL and MariaDB the lock itself is
# a session lock and this row only names the holder; on SQLite the row is the lock.
lock = Table(
    "keyturn_lock",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("operation", String(32), nullable=True),
    Column("job_id", String(32), nullable=True),
    Column("owner", String(255), nullable=True),  # host:pid
    Column("since", DateTime, nullable=True),
    Column("heartbeat_at", DateTime, nullable=True),
)
