"""The tamper-evident audit log: what is recorded, and every kind of tampering found."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, after_grace, assert_no_secret, base_env, run_cli


def audit_rows(app: App) -> list[dict[str, Any]]:
    out = app.cli("audit", "list", "--json", "--limit", "1000", check=True)
    return list(json.loads(out.stdout))


def verify(app: App, *args: str) -> tuple[int, str]:
    proc = app.cli("audit", "verify", *args)
    return proc.returncode, proc.stdout + proc.stderr


def busy_app(app: App) -> None:
    """init, encrypt-existing, a rotation, and a token: 6 entries."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.cli("rotate", "--yes", check=True)
    app.cli("token", "create", "--name", "ops", check=True)


def test_every_operation_is_recorded_without_secrets(app: App, tmp_path: Path) -> None:
    busy_app(app)
    app.cli("token", "revoke", "ops", check=True)
    new_kek = secrets.token_hex(32)
    env = {**app.env, "NEW_KEK": new_kek}
    app.cli("rotate-kek", "--new-kek-env", "NEW_KEK", "--yes", check=True, env=env)
    app.env["KEYTURN_KEK"] = new_kek
    job = json.loads(app.cli("jobs", "--json", check=True).stdout)[0]["id"]
    app.cli("restore", job, "--yes", check=True)
    app.cli("rotate", "--yes", check=True)
    app.cli("prune", job, "--yes", check=True)
    rows = audit_rows(app)
    actions = [(r["action"], r["details"].get("outcome")) for r in rows]
    assert actions == [
        ("init", None),
        ("encrypt-existing", "started"),
        ("encrypt-existing", "succeeded"),
        ("rotate", "started"),
        ("rotate", "succeeded"),
        ("token.create", None),
        ("token.revoke", None),
        ("rotate-kek", "started"),
        ("rotate-kek", "succeeded"),
        ("restore", "started"),
        ("restore", "succeeded"),
        ("rotate", "started"),
        ("rotate", "succeeded"),
        ("prune", None),
    ]
    assert [r["seq"] for r in rows] == list(range(1, 15))
    assert rows[4]["details"]["new_version"] == 2
    assert rows[4]["details"]["totals"]["rotated"] > 0
    assert all(r["actor"].startswith("cli:") for r in rows)
    # The chain still verifies after the KEK changed (the audit key was rewrapped).
    code, out = verify(app)
    assert code == 0, out
    text = app.cli("audit", "list").stdout + json.dumps(rows)
    assert_no_secret(text, new_kek, app.env["KEYTURN_KEK"])
    with sqlite3.connect(app.db) as conn:
        dump = "\n".join(conn.iterdump())
    assert_no_secret(dump, new_kek)


def test_refusals_and_dry_runs_write_no_entry_and_a_destroy_is_recorded(app: App) -> None:
    busy_app(app)
    before = len(audit_rows(app))
    app.cli("rotate", "--dry-run", check=True)
    app.cli("encrypt-existing", "--dry-run", check=True)
    assert app.cli("destroy-key", "2", "--yes").returncode == 3  # the active key
    assert app.cli("destroy-key", "1", "--yes").returncode == 3  # backups still use it
    assert len(audit_rows(app)) == before
    job = json.loads(app.cli("jobs", "--json", check=True).stdout)[0]["id"]
    app.cli("prune", job, "--yes", check=True)
    after_grace()
    app.cli("destroy-key", "1", "--yes", check=True)
    rows = audit_rows(app)
    assert [(r["action"], r["details"]) for r in rows[before:]] == [
        ("prune", {"job": job, "dropped": rows[before]["details"]["dropped"]}),
        ("destroy-key", {"version": 1}),
    ]
    assert verify(app)[0] == 0


def test_a_database_from_before_the_audit_log_gets_one_on_first_use(app: App) -> None:
    """keyturn_audit and keyturn_api_tokens are created by the first operation that
    needs them, including those that write their entry in their own transaction."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.cli("rotate", "--yes", check=True)
    job = json.loads(app.cli("jobs", "--json", check=True).stdout)[0]["id"]
    tamper(
        app,
        "DROP TABLE keyturn_audit",
        "DROP TABLE keyturn_api_tokens",
        "DELETE FROM keyturn_meta WHERE name LIKE 'audit_%' OR name = 'schema_version'",
    )
    assert "no tokens yet" in app.cli("token", "list", check=True).stdout
    tables = {r[0] for r in app.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "keyturn_api_tokens" not in tables  # listing does not create anything
    app.cli("prune", job, "--yes", check=True)
    after_grace()
    app.cli("destroy-key", "1", "--yes", check=True)
    assert [(r["seq"], r["action"]) for r in audit_rows(app)] == [(1, "prune"), (2, "destroy-key")]
    assert verify(app)[0] == 0


def tamper(app: App, *statements: str) -> None:
    with sqlite3.connect(app.db) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


TAMPERING = {
    "edited details": (
        [
            'UPDATE keyturn_audit SET details = \'{"name": "mallory", "scope": "admin"}\' '
            "WHERE seq = 6"
        ],
        "entry 6 fails its MAC",
    ),
    "edited actor": (
        ["UPDATE keyturn_audit SET actor = 'cli:someone-else' WHERE seq = 2"],
        "entry 2 fails its MAC",
    ),
    "inserted at the end": (
        [
            "INSERT INTO keyturn_audit VALUES (7, '2026-01-01T00:00:00.000000Z', 'cli:x', "
            "'destroy-key', '{}', '" + "ab" * 32 + "')"
        ],
        "entry 7 fails its MAC",
    ),
    "reordered": (
        [
            "UPDATE keyturn_audit SET seq = 100 WHERE seq = 3",
            "UPDATE keyturn_audit SET seq = 3 WHERE seq = 4",
            "UPDATE keyturn_audit SET seq = 4 WHERE seq = 100",
        ],
        "entry 3 fails its MAC",
    ),
    "deleted in the middle": (
        ["DELETE FROM keyturn_audit WHERE seq = 3"],
        "entries 3..3 are missing",
    ),
    "deleted newest": (
        ["DELETE FROM keyturn_audit WHERE seq >= 5"],
        "the newest entries were deleted",
    ),
    "head edited": (
        [
            "UPDATE keyturn_meta SET value = replace(value, '\"count\":6', '\"count\":4') "
            "WHERE name = 'audit_head'"
        ],
        "the audit head fails its MAC",
    ),
    "head deleted": (
        ["DELETE FROM keyturn_meta WHERE name = 'audit_head'"],
        "the audit head is missing",
    ),
    "audit key deleted": (
        ["DELETE FROM keyturn_meta WHERE name = 'audit_key'"],
        "the audit key is missing",
    ),
}


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
def test_tampering_is_detected(app: App, case: str) -> None:
    busy_app(app)
    assert len(audit_rows(app)) == 6
    assert verify(app)[0] == 0
    statements, expected = TAMPERING[case]
    tamper(app, *statements)
    code, out = verify(app)
    assert code == 1, out
    assert expected in out
    assert "SECURITY.md" in out
    as_json = json.loads(app.cli("audit", "verify", "--json").stdout)
    assert as_json["ok"] is False and as_json["problems"]


def test_a_rolled_back_log_is_caught_only_by_the_head_kept_outside(
    app: App, tmp_path: Path
) -> None:
    """Deleting the newest entries and putting back an older signed head passes
    `audit verify` alone; the head kept outside the database catches it."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    old_head = app.sql("SELECT value FROM keyturn_meta WHERE name = 'audit_head'")[0][0]
    app.cli("rotate", "--yes", check=True)
    saved = tmp_path / "head.json"
    saved.write_text(app.cli("audit", "head", check=True).stdout)
    assert verify(app, "--head", str(saved)) == (0, verify(app, "--head", str(saved))[1])
    assert "matches the head given" in verify(app, "--head", str(saved))[1]
    tamper(
        app,
        "DELETE FROM keyturn_audit WHERE seq > 3",
        f"UPDATE keyturn_meta SET value = '{old_head}' WHERE name = 'audit_head'",
    )
    assert verify(app)[0] == 0  # consistent on its own: the limit of an in-database head
    code, out = verify(app, "--head", str(saved))
    assert code == 1
    assert "the log no longer holds entry 5" in out
    # A forged head given on the command line is refused as such.
    forged = json.loads(saved.read_text())
    forged["count"] = 3
    saved.write_text(json.dumps(forged))
    assert "not a valid head of this log" in verify(app, "--head", str(saved))[1]


def test_an_operation_whose_entry_cannot_be_written_fails_and_writes_nothing(app: App) -> None:
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    tamper(
        app,
        "CREATE TRIGGER no_audit BEFORE INSERT ON keyturn_audit "
        "BEGIN SELECT RAISE(ABORT, 'audit is read-only'); END",
    )
    keys = app.sql("SELECT version, state, wrapped_dek FROM keyturn_keys")
    users = app.sql("SELECT id, secret FROM users")
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 1
    assert "audit entry for rotate could not be written" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert app.sql("SELECT version, state, wrapped_dek FROM keyturn_keys") == keys
    assert app.sql("SELECT id, secret FROM users") == users
    proc = app.cli("token", "create", "--name", "ops")
    assert proc.returncode == 1 and proc.stdout == ""
    assert app.sql("SELECT count(*) FROM keyturn_api_tokens") == [(0,)]


def test_a_tampered_head_blocks_further_operations(app: App) -> None:
    busy_app(app)
    tamper(
        app,
        "UPDATE keyturn_meta SET value = replace(value, '\"count\":6', '\"count\":9') "
        "WHERE name = 'audit_head'",
    )
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 1
    assert "audit head fails its check" in proc.stderr
    assert app.sql("SELECT max(version) FROM keyturn_keys") == [(2,)]


def test_audit_log_on_every_backend(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, api_key VARCHAR(255))")
    database.execute("INSERT INTO creds VALUES (1, 'sk_live_a'), (2, 'sk_live_b')")
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "creds"\ncolumn = "api_key"\nprimary_key = "id"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": secrets.token_hex(32)}

    def cli(*args: str) -> Any:
        return run_cli(*args, cwd=tmp_path, env=env)

    for args in (
        ("init",),
        ("encrypt-existing",),
        ("rotate", "--yes"),
        ("token", "create", "--name", "ops"),
    ):
        assert cli(*args).returncode == 0
    ok = cli("audit", "verify")
    assert ok.returncode == 0 and "6 entries" in ok.stdout, ok.stdout + ok.stderr
    database.execute("UPDATE keyturn_audit SET action = 'init' WHERE seq = 4")
    bad = cli("audit", "verify")
    assert bad.returncode == 1 and "entry 4 fails its MAC" in bad.stdout


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_connection_lost_while_writing_an_entry_is_a_database_error(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction (CI, test_connection_killed_mid_rotation): the session writing
    a rotation's audit entry was killed, and the CLI said the entry "could not be
    written; the operation was refused". A lost connection is a database error (exit
    1, "run it again to resume"), not a refusal by the log."""
    import keyturn
    from keyturn.keys.audit import AuditLog

    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, api_key VARCHAR(255))")
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n[[columns]]\ntable = "creds"\ncolumn = "api_key"\n'
    )
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    env = {**base_env(), "KEYTURN_KEK": os.environ["KEYTURN_KEK"]}
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    append = AuditLog.append

    def killed(self: AuditLog, conn: Any, *args: Any) -> Any:
        conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return append(self, conn, *args)

    monkeypatch.setattr(AuditLog, "append", killed)
    with (
        keyturn.open(tmp_path / "keyturn.toml") as store,
        pytest.raises(keyturn.DatabaseError, match="database error"),
    ):
        store.audit.record("tester", "rotate", {})
