"""keyturn's own schema is versioned: recorded by init, upgraded in order, a newer one refused."""

from __future__ import annotations

import pytest
from conftest import App

import keyturn
from keyturn import SchemaError
from keyturn.db import migrations


def version_row(app: App) -> list[tuple[str]]:
    return app.sql("SELECT value FROM keyturn_meta WHERE name = 'schema_version'")


def test_migrations_are_numbered_one_by_one() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(
        range(1, migrations.SCHEMA_VERSION + 1)
    )


def test_init_records_the_schema_version(app: App) -> None:
    app.cli("init", check=True)
    assert version_row(app) == [(str(migrations.SCHEMA_VERSION),)]


def test_a_newer_schema_is_refused_before_anything_is_written(app: App) -> None:
    app.cli("init", check=True)
    app.sql("UPDATE keyturn_meta SET value = '99' WHERE name = 'schema_version'")
    before = app.sql("SELECT * FROM users")
    with pytest.raises(SchemaError, match="version 99, newer than this keyturn"):
        keyturn.open(app.config)
    for args in (("status",), ("encrypt-existing",), ("rotate", "--yes"), ("init",)):
        proc = app.cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "upgrade keyturn" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert app.sql("SELECT * FROM users") == before
    assert version_row(app) == [("99",)]


def test_a_database_from_before_versioning_is_upgraded_by_the_next_write(app: App) -> None:
    """No version row, no ``mac`` column on the token records: the state an older
    keyturn left. Reading changes nothing; the first write brings it up to date."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.sql("DELETE FROM keyturn_meta WHERE name = 'schema_version'")
    app.sql("DROP TABLE keyturn_api_tokens")
    app.sql(
        "CREATE TABLE keyturn_api_tokens (name VARCHAR(64) PRIMARY KEY, scope VARCHAR(16) "
        "NOT NULL, token_hash VARCHAR(64) NOT NULL, created_at DATETIME NOT NULL, "
        "created_by VARCHAR(255) NOT NULL, revoked_at DATETIME)"
    )
    app.cli("status", check=True)
    assert version_row(app) == []
    app.cli("rotate", "--yes", check=True)
    assert version_row(app) == [(str(migrations.SCHEMA_VERSION),)]
    columns = {r[1] for r in app.sql("PRAGMA table_info(keyturn_api_tokens)")}
    assert "mac" in columns
    assert app.cli("verify").returncode == 0
