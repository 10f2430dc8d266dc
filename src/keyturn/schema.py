"""keyturn's own tables, created in the application's database by ``keyturn init``."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
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
    CheckConstraint("state IN ('active', 'retired', 'destroyed')", name="keyturn_keys_state"),
)

# At most one active version, enforced by the database where it has partial
# indexes; elsewhere the keystore checks it on every load.
Index(
    "keyturn_keys_one_active",
    keys.c.state,
    unique=True,
    sqlite_where=keys.c.state == "active",
    postgresql_where=keys.c.state == "active",
).ddl_if(dialect=("sqlite", "postgresql"))  # type: ignore[arg-type]  # tuples are documented
