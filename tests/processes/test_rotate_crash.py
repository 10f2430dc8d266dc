"""Rotation under SIGKILL and under a concurrent writer: real processes, every row checked."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import App, fill_users, users_only

import keyturn
from keyturn import WrongKEK
from keyturn._core.kek import LocalKEK
from keyturn.ops import rotate_kek as kek_rotation

ROWS = 20_000


def prepare(app: App, rows: int = ROWS) -> dict[int, str | None]:
    users_only(app)
    values = fill_users(app, rows)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    return values


def check_every_row(app: App, values: dict[int, str | None]) -> set[str]:
    """Every row decrypts to its original; returns the versions in use."""
    seen = set()
    with keyturn.open(app.config) as store:
        rows = app.sql("SELECT id, secret FROM users")
        assert len(rows) == len(values)
        for i, token in rows:
            if values[i] is None:
                assert token is None
                continue
            assert store.decrypt(token, context="users.secret") == values[i]
            seen.add(token.split(":")[1])
    return seen


def start_rotate(app: App, *extra: str) -> subprocess.Popen[str]:
    return app.start("rotate", "--yes", "--chunk-time", "0.05", *extra)


def test_rotate_survives_repeated_sigkill(app: App) -> None:
    values = prepare(app)
    rng = random.Random()
    kills = 0
    for _ in range(6):
        # 20k rows at 4000 rows/s is 5 s of work: no two sleeps (<= 4 s) can finish it,
        # so at least two runs are killed mid-way.
        proc = start_rotate(app, "--max-rate", "4000")
        time.sleep(rng.uniform(0.4, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        check_every_row(app, values)  # nothing lost at any kill point
        if proc.returncode == 0:
            break
    assert kills >= 2, "the rotation finished before it could be killed"
    # What the final run must do follows from the database, not from exit codes
    # (a kill can land after a job committed, before its process exited): resume
    # the running job if there is one, else mint exactly one more version.
    running = app.sql("SELECT target_version FROM keyturn_jobs WHERE state = 'running'")
    (top,) = app.sql("SELECT max(version) FROM keyturn_keys")[0]
    final = app.cli("rotate", "--yes", "--json", check=True)
    report = json.loads(final.stdout)
    assert report["new_version"] == (running[0][0] if running else top + 1)
    assert report["resumed"] is bool(running)
    assert check_every_row(app, values) == {str(report["new_version"])}
    # Never a version minted beyond one per job: killed jobs were resumed.
    jobs = app.sql("SELECT state FROM keyturn_jobs")
    assert {s for (s,) in jobs} == {"succeeded"}
    assert app.sql("SELECT count(*) FROM keyturn_keys") == [(len(jobs) + 1,)]


WRITER = r"""
import json, random, sqlite3, sys, time, os
import keyturn
store = keyturn.open(refresh_seconds=0.1)
conn = sqlite3.connect("app.db", timeout=30, isolation_level=None)
rng = random.Random(int(sys.argv[1]))
rows = int(sys.argv[2])
done = {}
n = 0
while not os.path.exists("stop") and n < 20000:
    n += 1
    i = rng.randint(1, rows)
    if done.get(i, "") is None:
        continue
    if rng.random() < 0.25:
        conn.execute("DELETE FROM users WHERE id = ?", (i,))
        done[i] = None
    else:
        value = f"written-by-app-{i}-{n}"
        conn.execute("UPDATE users SET secret = ? WHERE id = ?",
                     (store.encrypt(value, context="users.secret"), i))
        done[i] = value
    time.sleep(0.0005)
json.dump({str(k): v for k, v in done.items()}, open("writer.json", "w"))
"""


def test_concurrent_writer_keeps_every_write_and_deletion(app: App) -> None:
    values = prepare(app)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, "7", str(ROWS)],
        cwd=app.dir,
        env=app.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    rotate = start_rotate(app, "--json", "--max-rate", "10000")
    out, err = rotate.communicate(timeout=240)
    (app.dir / "stop").touch()
    _, werr = writer.communicate(timeout=120)
    assert writer.returncode == 0, werr.decode()
    assert rotate.returncode == 0, err
    report = json.loads(out)
    written = {int(k): v for k, v in json.loads((app.dir / "writer.json").read_text()).items()}
    assert sum(1 for v in written.values() if v is None) > 50 and len(written) > 500
    expected = dict(values)
    for i, v in written.items():
        if v is None:
            del expected[i]
        else:
            expected[i] = v
    present = {i for (i,) in app.sql("SELECT id FROM users")}
    assert present == set(expected), "a deleted row came back, or a row was lost"
    versions = check_every_row(app, expected)
    assert versions == {str(report["new_version"])} or app.sql(
        "SELECT state FROM keyturn_keys WHERE version = 1"
    ) == [("draining",)]


def test_rotate_kek_survives_sigkill(app: App) -> None:
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    dev = App(app.dir, env)
    users_only(app)
    values = fill_users(app, 300)
    dev.cli("init", check=True)
    dev.cli("encrypt-existing", check=True)
    for _ in range(4):
        dev.cli("rotate", "--yes", "--no-backup", check=True)
    rng = random.Random()
    key_file = app.dir / "data" / ".keyturn_kek"
    for n in range(8):
        new_file = app.dir / f"new{n}.kek"
        dev.cli("gen-kek", "--file", str(new_file), check=True)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyturn",
                "rotate-kek",
                "--new-kek-file",
                str(new_file),
                "--yes",
            ],
            cwd=app.dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.2, 0.9))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        # Whatever the instant: the key file (or its staged successor) opens the
        # keyring, and every DEK is wrapped by one KEK.
        status = dev.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        kek_id = json.loads(status.stdout)["kek_id"]
        assert {
            r[0] for r in app.sql("SELECT kek_id FROM keyturn_keys WHERE state != 'destroyed'")
        } == {kek_id}
    os.environ.pop("KEYTURN_KEK", None)
    assert key_file.exists()
    check_every_row(app, values)


def test_kill_between_commit_and_key_file_replace_is_recovered(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one window a random kill rarely hits, made certain."""
    monkeypatch.delenv("KEYTURN_KEK")
    env = dict(app.env)
    del env["KEYTURN_KEK"]
    App(app.dir, env).cli("init", check=True)
    new = LocalKEK(os.urandom(32), "test")
    with keyturn.open(app.config) as store:

        def die(*_: object) -> None:
            raise SystemExit("killed after the commit")

        monkeypatch.setattr(kek_rotation.os, "replace", die)
        with pytest.raises(SystemExit):
            kek_rotation.rotate_kek(store, new)
        monkeypatch.undo()
    monkeypatch.delenv("KEYTURN_KEK", raising=False)
    key_file = app.dir / "data" / ".keyturn_kek"
    assert Path(str(key_file) + ".pending").exists()
    with keyturn.open(app.config) as store:  # finishes the move
        assert store.kek.kek_id == new.kek_id
    assert not Path(str(key_file) + ".pending").exists()
    assert key_file.read_text().strip() == new.key_text()
    key_file.write_text(os.urandom(32).hex())  # a key that opens nothing
    with pytest.raises(WrongKEK):
        keyturn.open(app.config)
