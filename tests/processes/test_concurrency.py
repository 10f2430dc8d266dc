"""Concurrency: keyturn's own operations and live app processes overlapping.

Each test reproduces a race found by hand (issue 15) and checks it is now
refused or harmless: the keyring lock, the KEK check inside a mint, the app
contract's grace before destroy-key, prune's file naming, reaped helpers, and
reloads for a genuine new version right after a forged one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import App, Database, key_file
from parallel_app import ROWS, check_all_rotated, helper_pids, parallel_app, wait_for
from sqlalchemy import create_engine, event

import keyturn
from keyturn import KEKChanged, KeyringBusy, UnknownKeyVersion
from keyturn._core.kek import LocalKEK
from keyturn.db.database import write_transaction
from keyturn.db.locking import KeyringLock
from keyturn.kek.local import from_file
from keyturn.ops.rotate import Rotator
from keyturn.ops.rotate_kek import rotate_kek


def versions(database: Database) -> list[int]:
    return [v for (v,) in database.rows("SELECT version FROM keyturn_keys ORDER BY version")]


def audit_count(database: Database) -> int:
    return int(database.rows("SELECT count(*) FROM keyturn_audit")[0][0])


def test_a_held_lock_refuses_every_keyring_writer_and_names_its_holder(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    key_file(tmp_path / "new.kek")
    entries = audit_count(database)
    engine = create_engine(database.url)
    lock = KeyringLock(engine, "rotate", "0123456789ab").acquire()
    try:
        for args in (
            ["rotate", "--yes"],
            ["rotate-kek", "--new-kek-file", "new.kek", "--yes"],
            ["rotate", "--yes", "--atomic"],
        ):
            proc = app.cli(*args)
            assert proc.returncode == 4, proc.stderr
            line = proc.stderr.strip()
            assert "\n" not in line and "locked by rotate (job 0123456789ab) by " in line
            assert f":{os.getpid()} since " in line and "--wait" in line
        assert versions(database) == [1] and audit_count(database) == entries
        # --wait queues behind the holder instead of refusing.
        waiting = app.start("rotate", "--yes", "--json", "--wait", "30")
        time.sleep(1.5)
        assert waiting.poll() is None, "it waits while the lock is held"
    finally:
        lock.release()
        engine.dispose()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert json.loads(out)["new_version"] == 2
    check_all_rotated(app, database, 2)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import create_engine
    from keyturn.db.locking import KeyringLock
    KeyringLock(create_engine(sys.argv[1]), "rotate").acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_killed_holder_releases_the_lock_at_once(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database.url], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert app.cli("rotate", "--yes").returncode == 4
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    proc = app.cli("rotate", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    check_all_rotated(app, database, 2)


def test_two_rotations_started_together_mint_one_version(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    procs = [app.start("rotate", "--yes", "--json", "--max-rate", "2000") for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 4], [err for _, (_, err) in results]
    loser = next(err for code, (_, err) in results if code == 4)
    assert "locked by rotate" in loser
    assert versions(database) == [1, 2]
    assert database.rows("SELECT state FROM keyturn_jobs") == [("succeeded",)]
    check_all_rotated(app, database, 2)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_rotate_kek_during_a_rotation_is_refused_and_the_keyring_stays_whole(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction: rotate-kek 0.3-1 s after a rotation started split the keyring."""
    app = parallel_app(database, tmp_path, monkeypatch)
    key_file(tmp_path / "new.kek")
    rotation = app.start("rotate", "--yes", "--json", "--max-rate", "3000")
    wait_for(lambda: len(versions(database)) == 2)
    kek = app.cli("rotate-kek", "--new-kek-file", "new.kek", "--yes")
    assert kek.returncode == 4 and "locked by rotate (job " in kek.stderr, kek.stderr
    _, err = rotation.communicate(timeout=120)
    assert rotation.returncode == 0, err
    check_all_rotated(app, database, 2)  # the keyring opens with the KEK it had
    queued = app.cli("rotate-kek", "--new-kek-file", "new.kek", "--yes", "--wait", "30")
    assert queued.returncode == 0, queued.stderr
    env = dict(app.env, KEYTURN_KEK=(tmp_path / "new.kek").read_text())
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    check_all_rotated(App(app.dir, env), database, 2)


def test_a_mint_under_a_stale_kek_is_refused_in_its_own_transaction(app: App) -> None:
    """A process that loaded the KEK before another ran rotate-kek must not wrap with it."""
    app.cli("init", check=True)
    with keyturn.open() as stale, keyturn.open() as other:
        rotate_kek(other, LocalKEK(os.urandom(32), "test"))
        rotator = Rotator(stale)
        changed = "rotate-kek ran meanwhile; this step was rolled back"
        # Its first audit entry says the KEK changed (exit 3), not that the log was tampered.
        with pytest.raises(KEKChanged, match="rotate-kek ran"):
            stale.audit.record("tester", "check", {})
        with pytest.raises(KEKChanged, match=changed), write_transaction(stale.engine) as conn:
            rotator._mint(conn)
        # Reloading finds the configured KEK no longer opens the keyring: it says so.
        with pytest.raises(KEKChanged, match="restart this process with the current KEK"):
            stale.reload()
        with pytest.raises(KEKChanged):
            Rotator(stale).run()
    assert app.sql("SELECT version FROM keyturn_keys") == [(1,)]


def test_an_operation_that_loaded_the_kek_before_a_rotate_kek_still_audits(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction (model seed 311094613): encrypt-existing loaded the key file's KEK,
    rotate-kek ran, and its first audit entry failed with "the audit key does not open
    with this KEK". The audit key is unchanged, only rewrapped: it opens with the file's
    new KEK, as the data keys do after a reload."""
    (app.dir / "kek").write_text(app.env["KEYTURN_KEK"])
    (app.dir / "kek").chmod(0o600)
    app.write_config(
        app.config.read_text().replace("[[columns]]", 'kek = "file:kek"\n[[columns]]', 1)
    )
    monkeypatch.delenv("KEYTURN_KEK")
    app = App(app.dir, {k: v for k, v in app.env.items() if k != "KEYTURN_KEK"})
    app.cli("init", check=True)
    with keyturn.open() as stale:
        with keyturn.open() as other:
            rotate_kek(other, from_file(key_file(app.dir / "new.kek")))
        stale.audit.record("tester", "check", {"n": 1})
        assert stale.kek.kek_id == other.kek.kek_id
    checked = app.cli("audit", "verify")
    assert checked.returncode == 0 and "2 entries" in checked.stdout, checked.stderr


def test_destroy_waits_for_the_app_contract_and_an_app_secret_survives(app: App) -> None:
    """The reproduction: an app sealed a new secret under v1 after the rotation (its
    refresh not yet due) and destroy-key 1 then lost it. Now destroy-key waits for the
    grace and its last scan finds the value."""
    app.write_config(app.config.read_text().replace("refresh_seconds = 0.1", "refresh_seconds = 4"))
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    with keyturn.open() as running_app:
        with pytest.raises(keyturn.ConfigError, match="breaks the app contract"):
            keyturn.open(refresh_seconds=10)
        job = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
        token = running_app.encrypt("sk_new_after_rotation", context="users.secret")
        assert token.startswith("kt1:1:"), "the app has not refreshed yet: it seals under v1"
        app.sql("UPDATE users SET secret = ? WHERE id = 1", (token,))
        app.cli("prune", job, "--yes", check=True)
        early = app.cli("destroy-key", "1", "--yes")
        assert early.returncode == 3 and "destroy-key is allowed from" in early.stderr
        time.sleep(4.5)
        late = app.cli("destroy-key", "1", "--yes")
        assert late.returncode == 3 and "still used by 1 value(s)" in late.stderr
        assert running_app.encrypt("x", context="users.secret").startswith("kt1:2:")
    app.cli("rotate", "--yes", "--no-backup", check=True)  # moves the app's value to v3
    app.cli("destroy-key", "1", "--yes", check=True)
    with keyturn.open() as fresh:
        (value,) = app.sql("SELECT secret FROM users WHERE id = 1")[0]
        assert fresh.decrypt(value, context="users.secret") == "sk_new_after_rotation"


def test_prune_deletes_only_the_files_keyturn_made(app: App) -> None:
    """The reproduction: a backup_path edited to name the KEK file made prune delete it."""
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    report = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)
    backup = Path(report["backup_file"])
    victim = app.dir / "data" / ".keyturn_kek"
    victim.parent.mkdir()
    victim.write_text("precious")
    app.sql("UPDATE keyturn_jobs SET backup_path = ?", (str(victim),))
    proc = app.cli("prune", report["job"], "--yes")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious"
    assert f"names {victim} as its backup file" in proc.stderr and "left alone" in proc.stderr
    assert not backup.exists() and f"removed {backup}" in proc.stdout


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_killed_helper_on_this_host_is_taken_over_at_once(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction: the coordinator never reaped a killed helper, whose zombie
    looked alive, so its chunk waited for the whole lease (60 s)."""
    app = parallel_app(database, tmp_path, monkeypatch)
    started = time.monotonic()
    coordinator = app.start(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "400",
        "--max-rate", "1500", "--chunk-time", "0.05",
    )  # fmt: skip
    wait_for(lambda: bool(helper_pids(coordinator.pid)))
    time.sleep(0.8)
    for pid in helper_pids(coordinator.pid):
        os.kill(pid, signal.SIGKILL)
    out, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 0, err
    assert time.monotonic() - started < 30, "the dead helper's chunk waited for its lease"
    assert json.loads(out)["rotated"] == ROWS + ROWS - ROWS // 10
    check_all_rotated(app, database, 2)


def test_a_genuine_new_version_is_found_right_after_a_forged_one(app: App) -> None:
    app.cli("init", check=True)
    with keyturn.open() as store, keyturn.open() as rotating:
        with pytest.raises(UnknownKeyVersion):
            store.decrypt("kt1:999:" + "A" * 40, context="users.secret")
        with write_transaction(rotating.engine) as conn:
            Rotator(rotating)._mint(conn)
        rotating.reload()
        token = rotating.encrypt("fresh", context="users.secret")
        assert token.startswith("kt1:2:")
        assert store.decrypt(token, context="users.secret") == "fresh"


def test_forged_versions_cannot_flood_the_database(app: App) -> None:
    app.cli("init", check=True)
    with keyturn.open() as store:
        queries: list[str] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
        started = time.monotonic()
        for version in range(100, 120):
            with pytest.raises(UnknownKeyVersion):
                store.decrypt(f"kt1:{version}:" + "A" * 40, context="users.secret")
        elapsed = time.monotonic() - started
    lookups = [q for q in queries if "keyturn_keys" in q]
    assert len(lookups) <= 20, "one cheap look-up per forged version at most"
    assert elapsed >= 19 * 0.05 * 0.9, "look-ups are spaced, however many versions are forged"


def test_keyring_busy_is_exported_with_exit_code_4() -> None:
    from keyturn.cli import exit_code

    assert exit_code(KeyringBusy("x")) == 4


@pytest.mark.parametrize("database", ["postgresql", "mysql"], indirect=True)
def test_a_rotation_that_loses_its_lock_session_stops_and_resumes(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the lock's own session ends (a failover, an operator's kill): the server
    released the lock, so the rotation must stop before its next batch commits."""
    import hashlib

    app = parallel_app(database, tmp_path, monkeypatch)
    proc = app.start("rotate", "--yes", "--max-rate", "1000", "--chunk-time", "0.05")
    name = database.url.rsplit("/", 1)[1]
    if database.kind == "postgresql":
        query = (
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
            f"(SELECT oid FROM pg_database WHERE datname = '{name}')"
        )
    else:
        lock = "keyturn:" + hashlib.sha256(name.encode()).hexdigest()[:40]
        query = f"SELECT IS_USED_LOCK('{lock}') FROM DUAL"
    wait_for(lambda: len(versions(database)) == 2 and bool(database.rows(query)))
    time.sleep(0.5)
    (session,) = database.rows(query)[0]
    assert session is not None
    if database.kind == "postgresql":
        database.rows(f"SELECT pg_terminate_backend({int(session)})")
    else:
        database.execute(f"KILL {int(session)}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4 and "the keyring lock was lost" in err, err
    final = app.cli("rotate", "--yes", "--json")
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["resumed"] is True
    check_all_rotated(app, database, 2)
