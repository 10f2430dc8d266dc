"""A rotation's backup: one packed row per batch and column, every replaced token
restorable, and backups kept one row per value by an older keyturn packed by
migration 3 with nothing lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import App, Database, app_at, backed_up, pack_form

from keyturn.db import migrations

ROWS = 60


def users_app(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    database.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, secret TEXT, note VARCHAR(20))",
        "CREATE TABLE tags (name VARCHAR(20), n INTEGER, secret TEXT, PRIMARY KEY (name, n))",
    )
    for i in range(1, ROWS + 1):
        value = None if i % 10 == 0 else f"sk_live_{i:04d}_{'x' * (i % 7)}"
        database.execute("INSERT INTO users VALUES (:i, :v, 'n')", i=i, v=value)
        database.execute("INSERT INTO tags VALUES (:n, :i, :v)", n=f"t{i % 3}", i=i, v=f"tag{i}")
    return app_at(
        tmp_path,
        monkeypatch,
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "users"\ncolumn = "secret"\nbind = "row"\n'
        '[[columns]]\ntable = "tags"\ncolumn = "secret"\nprimary_key = ["name", "n"]\n',
    )


def values(database: Database) -> dict[tuple[str, str], str | None]:
    rows = database.rows("SELECT id, secret FROM users")
    found = {("users", str(i)): v for i, v in rows}
    for name, n, v in database.rows("SELECT name, n, secret FROM tags"):
        found[("tags", f"{name}/{n}")] = v
    return found


def rotate(app: App, *args: str) -> dict[str, object]:
    return json.loads(app.cli("rotate", "--yes", "--json", *args, check=True).stdout)


def rotated(app: App, database: Database) -> tuple[dict[tuple[str, str], str | None], str]:
    """The values once sealed (before the rotation), and the rotation's job."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    before = values(database)
    job = rotate(app)["job"]
    assert isinstance(job, str)
    return before, job


def test_packed_backups_restore_every_token_and_count_their_versions(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = users_app(database, tmp_path, monkeypatch)
    before, job = rotated(app, database)
    packs = database.rows(
        "SELECT table_name, column_name, value_count, versions, data FROM keyturn_backup_batches"
    )
    assert sum(n for _, _, n, _, _ in packs) == 2 * ROWS - ROWS // 10  # NULLs are not replaced
    assert len(packs) == 2, "one row per batch and column, not one per value"
    assert all(json.loads(v) == {"1": n} for _, _, n, v, _ in packs)
    # tags.secret, bound as a column, keeps the bytes its re-encryption decoded;
    # users.secret, bound per row, is packed from its tokens.
    forms = {table: pack_form(data) for table, _, _, _, data in packs}
    assert forms == {"tags": "opened", "users": "tokens"}
    kept = backed_up(database.url, job)
    assert sorted(old for *_, old in kept) == sorted(v for v in before.values() if v)
    assert {tuple(pk) for t, _, pk, _ in kept if t == "tags"} == {
        (f"t{i % 3}", i) for i in range(1, ROWS + 1)
    }
    keys = {k["version"]: k for k in json.loads(app.cli("keys", "--json", check=True).stdout)}
    assert keys[1]["backups"] == 2 * ROWS - ROWS // 10

    # The app writes two rows after the rotation: restore leaves them alone.
    database.execute("UPDATE users SET secret = 'changed-by-app' WHERE id = 3")
    database.execute("DELETE FROM users WHERE id = 4")
    restored = json.loads(app.cli("restore", job, "--yes", "--json", check=True).stdout)
    assert restored["restored"] == 2 * ROWS - ROWS // 10 - 2
    assert restored["changed_since"] == 2
    after = values(database)
    assert after.pop(("users", "3")) == "changed-by-app"
    expected = {k: v for k, v in before.items() if k not in {("users", "3"), ("users", "4")}}
    assert after == expected


def test_backups_kept_one_row_per_value_are_packed_by_the_migration(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = users_app(database, tmp_path, monkeypatch)
    before, job = rotated(app, database)
    kept = backed_up(database.url, job)
    now = values(database)
    # The database as keyturn 0.x left it: keyturn_backup, schema version 2.
    database.execute(
        "DELETE FROM keyturn_backup_batches",
        "CREATE TABLE keyturn_backup (id INTEGER PRIMARY KEY, job_id VARCHAR(32), "
        "table_name VARCHAR(128), column_name VARCHAR(128), pk TEXT, old_token TEXT, "
        "new_token TEXT)",
        "UPDATE keyturn_meta SET value = '2' WHERE name = 'schema_version'",
    )
    for n, (table, column, pk, old) in enumerate(kept, 1):
        key = str(pk[0]) if table == "users" else f"{pk[0]}/{pk[1]}"
        pk_text = json.dumps(pk) if n != 5 else "not a key"
        database.execute(
            "INSERT INTO keyturn_backup VALUES (:id, :j, :t, :c, :pk, :old, :new)",
            id=n, j=job, t=table, c=column, pk=pk_text, old=old, new=now[(table, key)],
        )  # fmt: skip
    keys = {k["version"]: k for k in json.loads(app.cli("keys", "--json", check=True).stdout)}
    assert keys[1]["backups"] == len(kept), "read before the migration too"
    assert database.rows("SELECT value FROM keyturn_meta WHERE name = 'schema_version'") == [("2",)]
    restored = json.loads(app.cli("restore", job, "--yes", "--json", check=True).stdout)
    assert restored["restored"] == len(kept) - 1 and restored["skipped_corrupt"] == 1
    assert database.rows("SELECT value FROM keyturn_meta WHERE name = 'schema_version'") == [
        (str(migrations.SCHEMA_VERSION),)
    ]
    assert "keyturn_backup" not in {name for (name,) in database.rows(_TABLES[database.kind])}, (
        "the old table is gone once packed"
    )
    fifth = kept[4]
    expected = dict(before)
    if fifth[0] == "users":
        expected[("users", str(fifth[2][0]))] = now[("users", str(fifth[2][0]))]
    else:
        key = f"{fifth[2][0]}/{fifth[2][1]}"
        expected[("tags", key)] = now[("tags", key)]
    assert values(database) == expected


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_the_sqlite_file_copy_is_the_database_before_the_rotation(
    journal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    database = Database("sqlite", f"sqlite:///{path}")
    app = users_app(database, tmp_path, monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    with sqlite3.connect(path) as conn:
        assert conn.execute(f"PRAGMA journal_mode = {journal}").fetchone() == (journal,)
    conn.close()
    before = values(database)
    copy = Path(str(rotate(app)["backup_file"]))
    assert copy.stat().st_mode & 0o777 == 0o600
    assert values(Database("sqlite", f"sqlite:///{copy}")) == before
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
