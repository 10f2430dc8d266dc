"""Key/value settings tables: a column entry's ``where`` selects the secret rows, and
every operation leaves the other rows exactly as they are (seed 000, TREK's
``app_settings``), on every backend."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, app_at, assert_no_secret
from legacy_encoders import passphrase, trek
from parallel_app import kill_mid_job_and_resume
from sqlalchemy import create_engine, text

import keyturn
from keyturn.errors import InvalidToken

SECRET_KEYS = ["oidc_client_secret", "smtp_pass", "admin_webhook_url", "admin_ntfy_token"]
OLD = "TREK_ENCRYPTION_KEY"
TREK_LEGACY = (
    f'[[legacy]]\nname = "trek"\nkey_env = "{OLD}"\nformat = "aes-gcm"\nprefix = "enc:v1:"\n'
    'encoding = "base64"\norder = "iv,tag,ct"\nkdf = "sha256"\nsuffix = ":api_keys:v1"\n'
)


def key_column(database: Database) -> str:
    """TREK's column is named ``key``, a reserved word on MariaDB."""
    return "`key`" if database.kind == "mysql" else '"key"'


def settings_app(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[App, dict[str, str | None], dict[str, str]]:
    """TREK's ``app_settings(key, value)``: four secrets (one plaintext, two in TREK's
    own ``enc:v1:`` format, one empty) among plain settings, one of which holds a
    value in that same format that is not keyturn's to touch."""
    old_key = passphrase()
    secrets_ = {
        "oidc_client_secret": f"oidc-{secrets.token_hex(8)}",
        "smtp_pass": f"smtp-Päss-{secrets.token_hex(8)}",
        "admin_webhook_url": f"https://hooks.example/{secrets.token_hex(8)}",
        "admin_ntfy_token": "",
    }
    plain = {
        "smtp_host": "mail.example.org",
        "smtp_port": "587",
        "allow_registration": "true",
        "app_name": "kt1:not-a-token, just a name",
        "theme_blob": trek(old_key, b"someone else's ciphertext"),
        "maps_api_key_hint": "",
    }
    stored = {
        "oidc_client_secret": secrets_["oidc_client_secret"],
        "smtp_pass": trek(old_key, secrets_["smtp_pass"].encode()),
        "admin_webhook_url": trek(old_key, secrets_["admin_webhook_url"].encode()),
        "admin_ntfy_token": "",
    }
    key_ = key_column(database)
    database.execute(f"CREATE TABLE app_settings ({key_} VARCHAR(100) PRIMARY KEY, value TEXT)")
    for key, value in {**stored, **plain}.items():
        database.execute("INSERT INTO app_settings VALUES (:k, :v)", k=key, v=value)
    config = (
        f'database = "{database.url}"\n\n{TREK_LEGACY}\n'
        '[[columns]]\ntable = "app_settings"\ncolumn = "value"\nprimary_key = "key"\n'
        f'bind = "row"\nlegacy = "trek"\nwhere = {{ key = {json.dumps(SECRET_KEYS)} }}\n'
    )
    return app_at(tmp_path, monkeypatch, config, **{OLD: old_key}), dict(secrets_), plain


def plain_rows(database: Database, plain: dict[str, str]) -> dict[str, Any]:
    keys = ", ".join(f"'{k}'" for k in plain)
    key_ = key_column(database)
    return dict(database.rows(f"SELECT {key_}, value FROM app_settings WHERE {key_} IN ({keys})"))


def read_secrets(database: Database) -> dict[str, str | None]:
    """Every secret row opened under its own row's context."""
    keys = ", ".join(f"'{k}'" for k in SECRET_KEYS)
    key_ = key_column(database)
    rows = database.rows(f"SELECT {key_}, value FROM app_settings WHERE {key_} IN ({keys})")
    with keyturn.open() as store:
        return {
            key: store.decrypt(value, context=keyturn.row_context("app_settings", "value", (key,)))
            if value
            else value
            for key, value in rows
        }


def counts(app: App, *args: str) -> dict[str, Any]:
    proc = app.cli(*args, "--json", check=True)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_every_operation_reads_and_writes_only_the_selected_rows(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, expected, plain = settings_app(database, tmp_path, monkeypatch)
    untouched = plain_rows(database, plain)
    assert untouched == plain
    app.cli("init", check=True)

    (column,) = counts(app, "status")["columns"]
    assert (column["rows"], column["plaintext"], column["legacy"], column["empty"]) == (4, 1, 2, 1)

    enc = counts(app, "encrypt-existing")
    assert (enc["encrypted"], enc["skipped_legacy"]) == (1, 2)
    imported = counts(app, "import-legacy", "--yes")
    assert imported["imported"] == 2
    assert read_secrets(database) == expected
    assert plain_rows(database, plain) == untouched, "the other app's enc:v1: value stays"

    verified = counts(app, "verify")
    assert (verified["ok"], verified["empty"], verified["failed"]) == (3, 1, 0)

    rotated = counts(app, "rotate", "--yes")
    assert (rotated["rotated"], rotated["new_version"]) == (3, 2)
    assert plain_rows(database, plain) == untouched
    (column,) = counts(app, "status")["columns"]
    assert (column["rows"], column["by_version"], column["plaintext"]) == (4, {"2": 3}, 0)

    everything = f"SELECT {key_column(database)}, value FROM app_settings ORDER BY 1"
    before_restore = database.rows(everything)
    app.cli("restore", rotated["job"], "--yes", check=True)
    assert read_secrets(database) == expected
    assert plain_rows(database, plain) == untouched
    assert database.rows(everything) != before_restore

    parallel = counts(app, "rotate", "--yes", "--workers", "2", "--rows-per-chunk", "10")
    assert (parallel["rotated"], parallel["failed"]) == (3, 0)
    assert read_secrets(database) == expected
    assert plain_rows(database, plain) == untouched
    tokens = [v for k, v in database.rows(everything) if k not in plain]
    assert {v.split(":")[1] for v in tokens if v} == {str(parallel["new_version"])}
    app.cli("rotate", "--yes", "--atomic", check=True)
    assert plain_rows(database, plain) == untouched


def test_a_token_copied_onto_another_settings_row_is_refused(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``bind = "row"`` one setting's token opens only in its own row."""
    app, expected, _ = settings_app(database, tmp_path, monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.cli("import-legacy", "--yes", check=True)
    key_ = key_column(database)
    ((smtp,),) = database.rows(f"SELECT value FROM app_settings WHERE {key_} = 'smtp_pass'")
    database.execute(
        f"UPDATE app_settings SET value = :v WHERE {key_} = 'oidc_client_secret'", v=smtp
    )
    with keyturn.open() as store, pytest.raises(InvalidToken):
        context = keyturn.row_context("app_settings", "value", ("oidc_client_secret",))
        store.decrypt(smtp, context=context)
    proc = app.cli("verify", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["failed"] == 1 and report["ok"] == 2
    assert [row["pk"] for row in report["failed_rows"]] == ["oidc_client_secret"]
    assert_no_secret(proc.stdout + proc.stderr, *[v for v in expected.values() if v])


def test_a_row_that_leaves_the_filter_mid_batch_is_not_written(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compare-and-swap holds the filter too: a row renamed out of it between
    our read and our write keeps what the app left there (every write path: a
    statement per row, PostgreSQL's arrays, MariaDB's joined rows, there with the
    walk's row locks off: they would hold the rename off until the batch is in)."""
    from keyturn.engine import dialects
    from keyturn.engine.walk import TableRewriter, each_value

    monkeypatch.setattr(dialects, "LOCKED_READS", ())
    database.execute(
        "CREATE TABLE settings (id INTEGER PRIMARY KEY, name VARCHAR(64), value TEXT)",
    )
    for i in range(1, 31):
        name = "smtp_pass" if i % 2 else "smtp_host"
        database.execute("INSERT INTO settings VALUES (:i, :n, :v)", i=i, n=name, v=f"v{i}")
    config = (
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "settings"\ncolumn = "value"\n'
        'where = { name = ["smtp_pass", "oidc_client_secret"] }\n'
    )
    app_at(tmp_path, monkeypatch, config).cli("init", check=True)
    seen: list[int] = []
    with keyturn.open() as store:
        (column,) = store.bound_columns()

        def decide(pk: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            seen.append(pk[0])
            if pk[0] == 7:  # the app renames the row between our read and our write
                database.execute("UPDATE settings SET name = 'smtp_note' WHERE id = 7")
            return "seen", f"{value}|rewritten"

        TableRewriter(store.engine, [column], [each_value(decide)]).run()
    assert sorted(seen) == list(range(1, 31, 2)), "only the selected rows were read"
    rows = {i: (n, v) for i, n, v in database.rows("SELECT id, name, value FROM settings")}
    assert rows[7] == ("smtp_note", "v7")
    for i in range(1, 31):
        if i != 7:
            assert rows[i][1] == (f"v{i}|rewritten" if i % 2 else f"v{i}"), i


def test_plain_rows_survive_a_killed_parallel_rotation(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-tenant settings, three secrets among six settings a tenant: SIGKILL a
    parallel rotation at a random moment, resume it; every plain row is
    byte-identical and every secret on the new key."""
    database.execute(
        "CREATE TABLE tenant_settings (tenant INTEGER, name VARCHAR(64), value TEXT, "
        "PRIMARY KEY (tenant, name))"
    )
    names = ["smtp_pass", "smtp_host", "webhook_secret", "locale", "api_token", "timezone"]
    rows = [
        {"t": t, "n": n, "v": f"{n}-{t}-{secrets.token_hex(6)}"} for t in range(1500) for n in names
    ]
    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenant_settings VALUES (:t, :n, :v)"), rows)
    engine.dispose()
    config = (
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "tenant_settings"\ncolumn = "value"\n'
        'primary_key = ["tenant", "name"]\nbind = "row"\n'
        'where = { name = ["smtp_pass", "webhook_secret", "api_token"] }\n'
    )
    app = app_at(tmp_path, monkeypatch, config)
    app.cli("init", check=True)
    assert counts(app, "encrypt-existing")["encrypted"] == 4500
    before = database.rows("SELECT tenant, name, value FROM tenant_settings")
    plain = {(t, n): v for t, n, v in before if n in ("smtp_host", "locale", "timezone")}
    rotation = app.start(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "300",
        "--max-rate", "3000",
    )  # fmt: skip
    kill_mid_job_and_resume(
        rotation, database, lambda: app.cli("rotate", "--yes", "--json", process=True)
    )
    after = {
        (t, n): v for t, n, v in database.rows("SELECT tenant, name, value FROM tenant_settings")
    }
    assert {k: v for k, v in after.items() if k in plain} == plain
    secret = {k: v for k, v in after.items() if k not in plain}
    assert len(secret) == 4500 and {v.split(":")[1] for v in secret.values()} == {"2"}
    wanted = {(r["t"], r["n"]): r["v"] for r in rows}
    with keyturn.open() as store:
        for (t, n), token in secret.items():
            context = keyturn.row_context("tenant_settings", "value", (t, n))
            assert store.decrypt(token, context=context) == wanted[(t, n)]
