"""Hardening: what an attacker's run and a new user's run found (issue 16), each kept
by a test."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, base_env, key_file

import keyturn
from keyturn.engine.pacing import Pacing
from keyturn.ops.encrypt_existing import encrypt_existing
from keyturn.ops.import_legacy import check_legacy_key


def odd_names_app(database: Database, tmp_path: Path) -> App:
    """A table and columns whose names hold ``%`` (and a space), with plaintext secrets."""
    q = '"' if database.kind != "mysql" else "`"
    database.execute(
        f"CREATE TABLE {q}pct%t{q} ({q}i%d{q} INTEGER PRIMARY KEY, {q}se%c ret{q} TEXT)"
    )
    for i in range(1, 51):
        database.execute(f"INSERT INTO {q}pct%t{q} VALUES (:i, :v)", i=i, v=f"sk_{i}_%s%%")
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "pct%t"\ncolumn = "se%c ret"\nprimary_key = "i%d"\nbind = "row"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    return App(tmp_path, env)


def test_percent_in_table_and_column_names(database: Database, tmp_path: Path) -> None:
    app = odd_names_app(database, tmp_path)
    app.cli("init", check=True)
    assert json.loads(app.cli("encrypt-existing", "--json", check=True).stdout)["encrypted"] == 50
    for args in (["rotate", "--yes"], ["rotate", "--yes", "--workers", "2"]):
        proc = app.cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
    assert json.loads(app.cli("verify", "--json", check=True).stdout)["ok"] == 50
    os.environ["KEYTURN_KEK"] = app.env["KEYTURN_KEK"]
    try:
        with keyturn.open(app.config) as store:
            q = '"' if database.kind != "mysql" else "`"
            for i, v in database.rows(f"SELECT {q}i%d{q}, {q}se%c ret{q} FROM {q}pct%t{q}"):
                assert v.startswith("kt1:3:")
                assert store.decrypt(v, context=f"pct%t.se%c ret#{i}") == f"sk_{i}_%s%%"
    finally:
        del os.environ["KEYTURN_KEK"]


def _chain_text(exc: BaseException) -> str:
    """Everything an error tracker could show of an exception: each exception in its
    chain, str, repr, args, attributes, and the formatted traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args), repr(vars(seen))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# A database that refuses row 4000 mid-batch, as a full disk would.
TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE UPDATE ON creds WHEN NEW.id = 4000 "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.id = 4000 THEN "
        "RAISE EXCEPTION 'disk I/O error'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE UPDATE ON creds FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
    "mysql": [
        "CREATE TRIGGER refuse BEFORE UPDATE ON creds FOR EACH ROW IF NEW.id = 4000 THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'disk I/O error'; END IF"
    ],
}
# A batch that hangs at row 4000, so the session is surely mid-UPDATE when killed.
SLOW = {
    "postgresql": [
        "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN IF NEW.id = 4000 THEN "
        "PERFORM pg_sleep(3); END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER slow BEFORE UPDATE ON creds FOR EACH ROW EXECUTE FUNCTION slow()",
    ],
    "mysql": [
        "CREATE TRIGGER slow BEFORE UPDATE ON creds FOR EACH ROW IF NEW.id = 4000 THEN "
        "DO SLEEP(3); END IF"
    ],
}


def _active_updates(database: Database, name: str) -> int:
    """Kill the sessions of the test database stuck in a statement (the slow trigger)."""
    if database.kind == "postgresql":
        return len(
            database.rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                "AND state = 'active' AND query LIKE 'UPDATE%' AND pid <> pg_backend_pid() "
                "AND now() - query_start > interval '0.5 seconds'",
                d=name,
            )
        )
    ids = database.rows(
        "SELECT id FROM information_schema.processlist WHERE db = :d "
        "AND command = 'Query' AND time_ms > 500 AND id <> CONNECTION_ID()",
        d=name,
    )
    for (session,) in ids:
        with contextlib.suppress(Exception):  # it may have ended meanwhile
            database.execute(f"KILL {int(session)}")
    return len(ids)


@pytest.mark.parametrize("how", ["trigger", "kill"])
def test_a_database_error_mid_batch_carries_no_plaintext(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The database fails mid-UPDATE of encrypt-existing (MariaDB writes plain ASCII
    values into the statement; every driver keeps the parameters on its error):
    nothing of the values may leave in the exception, its chain or its traceback."""
    if how == "kill" and database.kind == "sqlite":
        pytest.skip("SQLite has no session to kill; the trigger variant covers it")
    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, api_key TEXT)")
    planted = [f"sk_live_{i}_PLANTEDzq{i * 7919}" for i in range(1, 6001)]
    from sqlalchemy import create_engine, text

    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO creds VALUES (:i, :v)"),
            [{"i": i, "v": v} for i, v in enumerate(planted, 1)],
        )
    engine.dispose()
    database.execute(*(TRIGGERS if how == "trigger" else SLOW)[database.kind])
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n[[columns]]\ntable = "creds"\ncolumn = "api_key"\n'
    )
    kek = os.urandom(32).hex()
    monkeypatch.setenv("KEYTURN_KEK", kek)
    App(tmp_path, {**base_env(), "KEYTURN_KEK": kek}).cli("init", check=True)
    name = database.url.rsplit("/", 1)[1]
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(0.05):
            if _active_updates(database, name):
                return

    with keyturn.open(tmp_path / "keyturn.toml") as store:
        if how == "kill":
            threading.Thread(target=killer, daemon=True).start()
        try:
            with pytest.raises(keyturn.DatabaseError) as caught:
                encrypt_existing(store, pacing=Pacing(chunk_time=0.05, max_rate=2000))
        finally:
            stop.set()
    message = str(caught.value)
    assert message.startswith("database error: ") and "\n" not in message
    shown = _chain_text(caught.value)
    leaked = [p for p in planted if p in shown]
    assert not leaked, f"{len(leaked)} plaintexts in the exception"
    assert "PLANTED" not in shown and kek not in shown


def test_reading_operations_log_no_plaintext_at_any_level(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """With every logger at DEBUG (SQLAlchemy logs each row it builds), status,
    verify, a dry run and the legacy checks must not show a plaintext value."""
    from legacy_encoders import LAYOUTS, fernet_key

    key = fernet_key()
    _, encode, _ = LAYOUTS["fernet"]
    database.execute("CREATE TABLE hooks (id INTEGER PRIMARY KEY, secret TEXT)")
    planted = [f"whsec_{i}_PLANTEDqx{i * 31}" for i in range(1, 41)]
    for i, plain in enumerate(planted, 1):
        stored = plain if i % 2 else encode(key, plain.encode())
        database.execute("INSERT INTO hooks VALUES (:i, :s)", i=i, s=stored)
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[legacy]]\nname = "old"\nformat = "fernet"\nkey_env = "OLD_FERNET_KEY"\n'
        '[[columns]]\ntable = "hooks"\ncolumn = "secret"\nlegacy = "old"\n'
    )
    kek = os.urandom(32).hex()
    monkeypatch.setenv("KEYTURN_KEK", kek)
    monkeypatch.setenv("OLD_FERNET_KEY", key)
    App(tmp_path, {**base_env(), "KEYTURN_KEK": kek}).cli("init", check=True)
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # which sets itself to WARN
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        report = keyturn.status(store)
        assert report.columns[0].plaintext == 20 and report.columns[0].legacy == 20
        assert keyturn.verify(store).totals["legacy_ok"] == 20
        assert encrypt_existing(store, dry_run=True).totals["encrypted"] == 20
        check_legacy_key(store, store.bound_columns()[0])
    assert "sqlalchemy.engine" in caplog.text, "the engine did log at DEBUG"
    shown = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "PLANTED" not in shown and key not in shown and kek not in shown


def test_a_long_actor_is_bounded_once_before_it_is_macd_or_stored(
    database: Database, tmp_path: Path
) -> None:
    """A 270-character LOGNAME: audit verify raised a false alarm (SQLite) and rotate
    died after its 'started' entry (PostgreSQL: created_by overflowed)."""
    app = odd_names_app(database, tmp_path)
    app.env["LOGNAME"] = app.env["USER"] = "u" * 270
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 0, proc.stderr
    verify = app.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    actors = {e["actor"] for e in json.loads(app.cli("audit", "list", "--json").stdout)}
    assert all(len(a) == 255 for a in actors), actors


def test_rotate_refuses_before_writing_when_a_longer_version_would_overflow(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens grow by a character at v10: a column that fits v1..v9 tokens exactly
    must be refused by the preflight of the rotation to v10, not overflow mid-walk."""
    from keyturn._core import tokens
    from keyturn.ops.rotate import RotateOptions, Rotator

    width = tokens.token_length(9, 20)
    with sqlite3.connect(app.db) as conn:
        conn.execute(f"CREATE TABLE narrow (id INTEGER PRIMARY KEY, secret VARCHAR({width}))")
        conn.executemany("INSERT INTO narrow VALUES (?, ?)", [(i, "x" * 20) for i in range(50)])
    conn.close()
    app.write_config(
        'database = "sqlite:///app.db"\n[[columns]]\ntable = "narrow"\ncolumn = "secret"\n'
    )
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    with keyturn.open() as store:
        for _ in range(8):
            Rotator(store, RotateOptions(backup=False)).run()
        assert store.active_version == 9
    before = app.sql("SELECT * FROM narrow ORDER BY id")
    proc = app.cli("rotate", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "re-encrypting under key v10 needs a" in proc.stderr
    assert "Nothing was written" in proc.stderr
    assert app.sql("SELECT max(version) FROM keyturn_keys") == [(9,)]
    assert app.sql("SELECT * FROM narrow ORDER BY id") == before
    assert app.sql("SELECT count(*) FROM keyturn_jobs WHERE state = 'running'") == [(0,)]


def test_import_legacy_checks_widths_before_its_first_write(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from legacy_encoders import LAYOUTS, fernet_key

    key = fernet_key()
    _, encode, _ = LAYOUTS["fernet"]
    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE hooks (id INTEGER PRIMARY KEY, secret VARCHAR(255))")
        rows = [(i, encode(key, b"s" * 40)) for i in range(1, 31)]
        rows.append((31, "p" * 200))  # plaintext whose token needs 310 characters
        conn.executemany("INSERT INTO hooks VALUES (?, ?)", rows)
    conn.close()
    app.write_config(
        'database = "sqlite:///app.db"\n'
        '[[legacy]]\nname = "old"\nformat = "fernet"\nkey_env = "OLD_FERNET_KEY"\n'
        '[[columns]]\ntable = "hooks"\ncolumn = "secret"\nlegacy = "old"\n'
    )
    app.env["OLD_FERNET_KEY"] = key
    app.cli("init", check=True)
    before = app.sql("SELECT * FROM hooks ORDER BY id")
    proc = app.cli("import-legacy", "--yes", "--include-plaintext")
    assert proc.returncode == 2 and "the longest value needs a" in proc.stderr, proc.stderr
    assert app.sql("SELECT * FROM hooks ORDER BY id") == before
    assert app.cli("import-legacy", "--yes").returncode == 0  # without the long plaintext


def test_import_legacy_decrypts_for_its_width_check_only_what_its_size_cannot_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value is longer than its plaintext: in a 255-character column the longest
    value, as the database counts it, clears them all, and none is read. A Fernet
    value's size bounds its plaintext to within a block: in a 90-character column,
    10-byte secrets fit by their size alone, 33-byte ones only once decrypted
    (their bound, 47 bytes, needs 106 characters; 33 bytes need 88), and a 40-byte
    one does not fit (97 characters): refused, as before."""
    from legacy_encoders import LAYOUTS, fernet_key

    from keyturn.db.columns import BoundColumn
    from keyturn.legacy import LegacyReader
    from keyturn.ops.import_legacy import _check_width

    key = fernet_key()
    _, encode, _ = LAYOUTS["fernet"]
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE hooks (id INTEGER PRIMARY KEY, secret VARCHAR(90))")
        rows = [(i, encode(key, os.urandom(5).hex().encode())) for i in range(1, 21)]
        rows += [(i, encode(key, b"s" * 33)) for i in range(21, 26)]
        conn.executemany("INSERT INTO hooks VALUES (?, ?)", rows)
    conn.close()
    (tmp_path / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n'
        '[[legacy]]\nname = "old"\nformat = "fernet"\nkey_env = "OLD_FERNET_KEY"\n'
        '[[columns]]\ntable = "hooks"\ncolumn = "secret"\nlegacy = "old"\n'
    )
    kek = os.urandom(32).hex()
    for name, value in (("KEYTURN_KEK", kek), ("OLD_FERNET_KEY", key)):
        monkeypatch.setenv(name, value)
    App(tmp_path, {**base_env(), "KEYTURN_KEK": kek}).cli("init", check=True)
    opened: list[object] = []
    decrypt = LegacyReader.decrypt

    def counted(self: LegacyReader, value: str | bytes) -> bytes:
        opened.append(value)
        return decrypt(self, value)

    monkeypatch.setattr(LegacyReader, "decrypt", counted)
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        (column,) = store.bound_columns()
        assert column.width == 90
        with monkeypatch.context() as patched:
            patched.setattr(BoundColumn, "secret_values", None)  # never called
            _check_width(store, replace(column, width=255), True)
        assert not opened
        _check_width(store, column, False)
        assert sorted(opened) == sorted(value for _, value in rows[20:])
        with sqlite3.connect(tmp_path / "app.db") as conn:
            conn.execute("INSERT INTO hooks VALUES (26, ?)", (encode(key, b"s" * 40),))
        conn.close()
        with pytest.raises(keyturn.SchemaError, match="the longest value needs a 97-character"):
            _check_width(store, column, False)


def test_rows_edited_by_hand_are_reported_not_crashed_on(app: App) -> None:
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    job = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    app.sql("UPDATE keyturn_audit SET details = '[1, 2]' WHERE seq = 2")
    app.sql("UPDATE keyturn_audit SET at = X'0102' WHERE seq = 3")
    audit = app.cli("audit", "verify")
    assert audit.returncode == 1 and "Traceback" not in audit.stderr
    assert "entry 2 fails its MAC" in audit.stdout and "entry 3 fails its MAC" in audit.stdout
    assert app.cli("audit", "list").returncode == 0
    app.sql("UPDATE keyturn_keys SET created_at = 'garbage' WHERE version = 1")
    status = app.cli("status")
    assert status.returncode == 3 and status.stderr.count("\n") == 1
    assert "created_at of version 1 is not a date" in status.stderr
    app.sql("UPDATE keyturn_keys SET created_at = '2026-01-01 00:00:00' WHERE version = 1")
    app.sql("UPDATE keyturn_jobs SET progress = '{bad', report = '[', created_at = 'x'")
    [(lost,)] = app.sql("SELECT value_count FROM keyturn_backup_batches WHERE id = 1")
    app.sql("UPDATE keyturn_backup_batches SET data = X'6b746231' WHERE id = 1")
    listed = json.loads(app.cli("jobs", "--json", check=True).stdout)
    assert listed[0]["report"] == {"corrupt": "the stored report is not JSON"}
    restored = json.loads(app.cli("restore", job, "--yes", "--json", check=True).stdout)
    assert restored["skipped_corrupt"] == lost and restored["restored"] > 0
    assert app.cli("rotate", "--yes").returncode == 0


def test_small_things_a_new_user_tripped_on(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    app.cli("init", check=True)
    # token create --output: a 0600 file, the token not on stdout.
    made = app.cli("token", "create", "--name", "ops", "--output", "ops.token", check=True)
    path = app.dir / "ops.token"
    assert made.stdout == "" and (path.stat().st_mode & 0o777) == 0o600
    assert path.read_text().strip().startswith("kta_")
    again = app.cli("token", "create", "--name", "ops2", "--output", "ops.token")
    assert again.returncode == 2 and "exists" in again.stderr
    # rotate-kek checks the current KEK before it asks for (or reads) the new one.
    wrong = App(app.dir, dict(app.env, KEYTURN_KEK=os.urandom(32).hex())).cli("rotate-kek")
    assert wrong.returncode == 3 and "does not open" in wrong.stderr
    # after rotate-kek --new-kek-file, the copy left behind is pointed out.
    env = {k: v for k, v in app.env.items() if k != "KEYTURN_KEK"}
    (app.dir / "kek").write_text(app.env["KEYTURN_KEK"])
    (app.dir / "kek").chmod(0o600)
    app.write_config(
        app.config.read_text().replace("[[columns]]", 'kek = "file:kek"\n[[columns]]', 1)
    )
    key_file(app.dir / "new.kek")
    done = App(app.dir, env).cli("rotate-kek", "--new-kek-file", "new.kek", "--yes", check=True)
    assert "new.kek is a second copy of it" in done.stdout
    # the library's error does not tell a Python caller to pass a command-line flag.
    monkeypatch.chdir(app.dir.parent)
    with pytest.raises(keyturn.ConfigError, match=r"keyturn.open\(PATH\)"):
        keyturn.open()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_encrypt_existing_finds_the_longest_plaintext_in_the_database(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    """The width check asks the database for the longest values, counted in UTF-8
    bytes; if those are of unknown shape (left alone) it reads every value."""
    from keyturn.ops.encrypt_existing import _check_width

    kind = {"sqlite": "BLOB", "postgresql": "BYTEA", "mysql": "VARBINARY(255)"}[database.kind]
    database.execute(
        f"CREATE TABLE w (id INTEGER PRIMARY KEY, secret {kind if binary else 'VARCHAR(255)'})"
    )

    def insert(i: int, value: str | None) -> None:
        stored = value.encode() if binary and value is not None else value
        database.execute("INSERT INTO w VALUES (:i, :v)", i=i, v=stored)

    wide = "é" * 60  # 120 bytes: a 204-character token
    for i, value in enumerate([None, "", "short", wide], 1):
        insert(i, value)
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n[[columns]]\ntable = "w"\ncolumn = "secret"\n'
    )
    kek = os.urandom(32).hex()
    monkeypatch.setenv("KEYTURN_KEK", kek)
    App(tmp_path, {**base_env(), "KEYTURN_KEK": kek}).cli("init", check=True)
    unknown = os.urandom(100).hex()  # 200 characters of hex: another scheme's, left alone
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        (column,) = store.bound_columns()
        column = replace(column, width=255)  # as declared (SQLite and PostgreSQL: none for binary)

        def longest() -> tuple[int, list[object]] | None:
            with store.engine.connect() as conn:
                return column.longest_values(conn)

        assert longest() == (120, [wide])
        _check_width(store, column, False)
        insert(5, unknown)
        assert longest() == (200, [unknown])
        _check_width(store, column, False)  # the 120-byte value is the longest sealed
        with pytest.raises(keyturn.SchemaError, match="needs a 310-character token"):
            _check_width(store, column, True)  # the hex too, as plaintext
        insert(6, "ü" * 90)  # 180 bytes: a 284-character token
        with pytest.raises(keyturn.SchemaError, match="needs a 284-character token"):
            _check_width(store, column, False)


def test_an_sqlite_file_in_utf16_has_its_longest_plaintext_found_by_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite counts a UTF-16 file's text in UTF-16: every value is read instead."""
    from keyturn.ops.encrypt_existing import _check_width

    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("PRAGMA encoding = 'UTF-16le'")
        conn.execute("CREATE TABLE w (id INTEGER PRIMARY KEY, secret VARCHAR(255))")
        conn.executemany("INSERT INTO w VALUES (?, ?)", [(1, "a" * 100), (2, "ü" * 90)])
    conn.close()
    (tmp_path / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n[[columns]]\ntable = "w"\ncolumn = "secret"\n'
    )
    kek = os.urandom(32).hex()
    monkeypatch.setenv("KEYTURN_KEK", kek)
    monkeypatch.chdir(tmp_path)
    App(tmp_path, {**base_env(), "KEYTURN_KEK": kek}).cli("init", check=True)
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        (column,) = store.bound_columns()
        with store.engine.connect() as conn:
            assert column.longest_values(conn) is None
        with pytest.raises(keyturn.SchemaError, match="needs a 284-character token"):
            _check_width(store, column, False)  # 180 bytes in UTF-8; 200 in UTF-16
