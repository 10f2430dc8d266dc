"""The CLI as a user runs it: real processes on real SQLite files."""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
from pathlib import Path

import pytest
from conftest import App, assert_no_secret

from keyturn._core.keyring import DataKey, Keyring


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in paths]


def decrypt_all(app: App, kek_hex: str) -> dict[tuple[str, int], str | None]:
    """Read every configured value back with an independent keyring built from the DB."""
    import keyturn

    with keyturn.open(app.config) as store:
        ring: Keyring = store.keyring
    out: dict[tuple[str, int], str | None] = {}
    for i, v in app.sql("SELECT id, secret FROM users"):
        out[("users", i)] = ring.decrypt(v, "users.secret").decode() if v else v
    for i, v in app.sql("SELECT id, token FROM integrations"):
        out[("integrations", i)] = ring.decrypt(v, f"integrations.token#{i}").decode()
    return out


@pytest.mark.parametrize(
    "command",
    [[], ["init"], ["encrypt-existing"], ["status"], ["gen-kek"], ["import-legacy"], ["verify"]],
)
def test_help_answers_the_question(app: App, command: list[str]) -> None:
    proc = app.cli(*command, "--help", check=True)
    assert "Usage:" in proc.stdout
    if not command:
        assert "Exit codes" in proc.stdout and "KEYTURN_KEK" in proc.stdout


def test_init_then_idempotent(app: App) -> None:
    first = app.cli("init", "--json", check=True)
    data = json.loads(first.stdout)
    assert data["created"] is True and data["active_version"] == 1
    assert data["kek_source"] == "env:KEYTURN_KEK"
    before = digest(app.db)
    second = app.cli("init", check=True)
    assert "nothing changed" in second.stdout
    assert digest(app.db) == before
    assert not (app.dir / "data").exists(), "a KEK from an env var is never written to disk"


def test_encrypt_existing_status_and_round_trip(
    app: App, kek_hex: str, expected: dict[tuple[str, int], str | None]
) -> None:
    app.cli("init", check=True)
    dry = app.cli("encrypt-existing", "--dry-run", "--json", check=True)
    assert (
        json.loads(dry.stdout)["encrypted"] == 14
    )  # 6 users (of 8: one NULL, one empty) + 8 integrations
    assert app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:%'") == [(0,)]
    run = app.cli("encrypt-existing", "--json", check=True)
    report = json.loads(run.stdout)
    assert report["encrypted"] == 14 and report["skipped_empty"] == 2 and report["failed"] == 0
    assert report["columns"]["users.secret"]["encrypted"] == 6
    again = json.loads(app.cli("encrypt-existing", "--json", check=True).stdout)
    assert again["encrypted"] == 0 and again["already_encrypted"] == 14
    assert decrypt_all(app, kek_hex) == expected
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    assert status["active_version"] == 1
    cols = {c["column"]: c for c in status["columns"]}
    assert cols["users.secret"] == {
        "column": "users.secret",
        "rows": 8,
        "plaintext": 0,
        "empty": 2,
        "by_version": {"1": 6},
        "legacy": 0,
        "where": "",
        "invalid": 0,
        "unknown": 0,
    }
    assert status["keys"][0]["rows"] == 14 and status["keys"][0]["state"] == "active"
    human = app.cli("status", check=True).stdout
    assert "active key: v1" in human and "users.secret" in human
    for proc in (dry, run, app.cli("status")):
        assert_no_secret(proc.stdout + proc.stderr, kek_hex)


def test_token_copied_to_another_row_fails_with_row_binding(app: App) -> None:
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    (token,) = app.sql("SELECT token FROM integrations WHERE id = 1")[0]
    app.sql("UPDATE integrations SET token = ? WHERE id = 2", (token,))
    import keyturn
    from keyturn import InvalidToken

    with keyturn.open(app.config) as store:
        assert store.decrypt(token, context="integrations.token#1")
        with pytest.raises(InvalidToken):
            store.decrypt(token, context="integrations.token#2")
    proc = app.cli("encrypt-existing", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["failed_rows"] == [{"table": "integrations", "column": "token", "pk": 2}]
    assert "primary key" in proc.stderr and token not in proc.stderr + proc.stdout


def test_wrong_kek_exits_3_and_writes_nothing(app: App) -> None:
    app.cli("init", check=True)
    before = digest(app.db)
    wrong = dict(app.env, KEYTURN_KEK=secrets.token_hex(32))
    for command in (["init"], ["encrypt-existing"], ["status"]):
        proc = App(app.dir, wrong).cli(*command)
        assert proc.returncode == 3, proc.stderr
        assert "does not open" in proc.stderr and proc.stderr.count("\n") == 1
        assert_no_secret(proc.stderr + proc.stdout, wrong["KEYTURN_KEK"], app.env["KEYTURN_KEK"])
    assert digest(app.db) == before
    assert not (app.dir / "data").exists()


def test_wrong_key_file_leaves_db_and_key_file_byte_identical(app: App) -> None:
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    dev = App(app.dir, env)
    dev.cli("init", check=True)
    key_file = app.dir / "data" / ".keyturn_kek"
    key_file.chmod(0o600)
    key_file.write_text(secrets.token_hex(32) + "\n")
    before = digest(app.db, key_file)
    proc = dev.cli("encrypt-existing")
    assert proc.returncode == 3 and "does not open" in proc.stderr
    assert digest(app.db, key_file) == before


def test_dev_init_generates_a_0600_key_file_with_a_warning(app: App) -> None:
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    proc = App(app.dir, env).cli("init", check=True)
    key_file = app.dir / "data" / ".keyturn_kek"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "warning" in proc.stderr and "Back it up" in proc.stderr
    assert key_file.read_text().strip() not in proc.stdout + proc.stderr
    # The next command finds the file; no second key is generated.
    App(app.dir, env).cli("encrypt-existing", check=True)
    assert len(list((app.dir / "data").iterdir())) == 1


def test_no_kek_on_an_initialized_db_never_generates_one(app: App) -> None:
    app.cli("init", check=True)
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    proc = App(app.dir, env).cli("init")
    assert proc.returncode == 3 and "no KEK found" in proc.stderr
    assert not (app.dir / "data").exists()


def test_malformed_kek_is_not_echoed(app: App) -> None:
    bad = "my-s3cret-passphrase-that-is-not-a-key"
    proc = App(app.dir, dict(app.env, KEYTURN_KEK=bad)).cli("init")
    assert proc.returncode == 3 and "malformed" in proc.stderr
    assert bad not in proc.stderr + proc.stdout


def test_production_refusals(app: App) -> None:
    env = dict(app.env, KEYTURN_ENV="production")
    del env["KEYTURN_KEK"]
    proc = App(app.dir, env).cli("init")
    assert proc.returncode == 3 and "production" in proc.stderr
    assert not (app.dir / "data").exists()
    weak = App(app.dir, dict(env, KEYTURN_KEK="00" * 32)).cli("init")
    assert weak.returncode == 3 and "all zeros" in weak.stderr
    ok = App(app.dir, dict(env, KEYTURN_KEK=secrets.token_hex(32))).cli("init")
    assert ok.returncode == 0 and "warning" not in ok.stderr


def test_group_readable_key_file_is_refused(app: App) -> None:
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    App(app.dir, env).cli("init", check=True)
    key_file = app.dir / "data" / ".keyturn_kek"
    key_file.chmod(0o644)
    proc = App(app.dir, env).cli("status")
    assert proc.returncode == 3 and "chmod 600" in proc.stderr


@pytest.mark.parametrize(
    ("config", "code", "match"),
    [
        ('database = "sqlite:///app.db"\nbogus = 1\n', 2, "unknown key"),
        ('database = "sqlite:///missing.db"\n', 2, "does not exist"),
        (
            'database = "sqlite:///app.db"\n[[columns]]\ntable = "nope"\ncolumn = "x"\n',
            2,
            "table 'nope' does not exist",
        ),
        ('database = "sqlite:///app.db"\nkek = "vault:x"\n', 2, "env:NAME"),
        ('database = "foo://x/y"\n', 2, "unknown kind of database 'foo'"),
        ('database = "postgresql+pg8000://x/y"\n', 2, "pip install 'keyturn[postgres]'"),
        ('database = "sqlite:///app.db"\n# caf\xe9\n', 2, "not UTF-8 text"),
        ('database = "sqlite:///app.db"\nkek = "file:data"\n', 3, "is not a regular file"),
    ],
)
def test_config_errors_exit_2_with_one_line(app: App, config: str, code: int, match: str) -> None:
    app.config.write_bytes(config.encode("latin-1"))
    (app.dir / "data").mkdir(mode=0o700)  # a directory where a key file is named
    before = digest(app.db)
    proc = app.cli("init")
    assert proc.returncode == code, proc.stderr
    assert match in proc.stderr and proc.stderr.count("\n") == 1
    assert digest(app.db) == before


def test_status_before_init(app: App) -> None:
    proc = app.cli("status")
    assert proc.returncode == 2 and "keyturn init" in proc.stderr


def test_gen_kek_file_is_0600_and_never_overwritten(app: App) -> None:
    target = app.dir / "new.kek"
    proc = app.cli("gen-kek", "--file", str(target), check=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    key = target.read_text().strip()
    assert len(key) == 64 and key not in proc.stdout + proc.stderr
    again = app.cli("gen-kek", "--file", str(target))
    assert again.returncode == 2 and target.read_text().strip() == key
    printed = app.cli("gen-kek", check=True).stdout.strip()
    assert len(bytes.fromhex(printed)) == 32


def test_config_flag_and_env(app: App, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    from conftest import run_cli

    proc = run_cli("--config", str(app.config), "init", cwd=elsewhere, env=app.env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("status", cwd=elsewhere, env=dict(app.env, KEYTURN_CONFIG=str(app.config)))
    assert proc.returncode == 0, proc.stderr
    assert run_cli("status", cwd=elsewhere, env=app.env).returncode == 2


def test_no_tty_means_no_progress_animation(app: App) -> None:
    app.cli("init", check=True)
    proc = app.cli("encrypt-existing", check=True)
    assert "\r" not in proc.stderr + proc.stdout


def test_datakey_never_in_status_json(app: App) -> None:
    app.cli("init", check=True)
    import keyturn

    with keyturn.open(app.config) as store:
        keys: list[DataKey] = [store.keyring._keys[v] for v in store.keyring.versions]
    out = app.cli("status", "--json", check=True).stdout
    for key in keys:
        assert key.key.hex() not in out


def test_progress_bar_on_a_tty(app: App) -> None:
    import os
    import pty
    import subprocess
    import sys

    app.cli("init", check=True)
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyturn", "encrypt-existing"],
        cwd=app.dir,
        env=app.env,
        stdin=child,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0
    os.close(main)
    text = out.decode()
    assert "users.secret" in text and "rows/s" in text and "ETA" in text
    assert_no_secret(text)


def test_status_warns_past_the_cryptoperiod(app: App) -> None:
    app.cli("init", check=True)
    app.sql("UPDATE keyturn_keys SET created_at = '2023-01-01 00:00:00.000000'")
    proc = app.cli("status", check=True)
    assert "past the 730-day cryptoperiod" in proc.stdout and "keyturn rotate" in proc.stdout
    app.write_config("cryptoperiod_days = 5000\n" + app.config.read_text())
    data = json.loads(app.cli("status", "--json", check=True).stdout)
    assert data["cryptoperiod_days"] == 5000 and data["warnings"] == [
        w for w in data["warnings"] if "plaintext" in w
    ]


def test_operations_log_their_start_end_and_counts_on_request(
    app: App, expected: dict[tuple[str, int], str | None], kek_hex: str
) -> None:
    """--log-format json (or $KEYTURN_LOG_FORMAT): each audited operation logs its
    start and its end with outcome, counts and seconds, one JSON object per line,
    never a value; without it, nothing more is printed."""
    app.cli("init", check=True)
    quiet = app.cli("encrypt-existing", "--dry-run", check=True)
    assert "operation" not in quiet.stderr
    run = app.cli("--log-format", "json", "encrypt-existing", check=True)
    records = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    start, end = records[0], records[-1]
    assert (start["event"], start["operation"]) == ("operation.start", "encrypt-existing")
    assert (end["event"], end["outcome"]) == ("operation.end", "succeeded")
    assert end["counts"]["encrypted"] == 14 and end["seconds"] >= 0
    env = {**app.env, "KEYTURN_LOG_FORMAT": "text"}
    rotated = app.cli("rotate", "--yes", env=env, check=True)
    assert "keyturn: rotate started" in rotated.stderr
    assert "keyturn: rotate succeeded in" in rotated.stderr and "14 rotated" in rotated.stderr
    bad = app.cli("--log-format", "json", "restore", "feedfacecafe", "--yes")
    assert bad.returncode == 2  # no such job: refused before the operation began
    for proc in (run, rotated, bad):
        assert_no_secret(proc.stdout + proc.stderr, kek_hex, *(v for v in expected.values() if v))
