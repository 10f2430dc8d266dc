"""Shared by the parallel-rotation and concurrency tests: a table of ROWS secrets
taken over by keyturn, and ways to watch its helper processes."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, base_env, run_cli

import keyturn

ROWS = 3000


def parallel_app(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    """``secrets(id, a, b)`` with ROWS rows, taken over by keyturn (tokens on v1)."""
    database.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a VARCHAR(255), b TEXT)")
    from sqlalchemy import create_engine, text

    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO secrets VALUES (:i, :a, :b)"),
            [
                {"i": i, "a": f"sk_{i}", "b": None if i % 10 == 0 else f"tok_{i}"}
                for i in range(1, ROWS + 1)
            ],
        )
    engine.dispose()
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "secrets"\ncolumn = "a"\n'
        '[[columns]]\ntable = "secrets"\ncolumn = "b"\nbind = "row"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    app = App(tmp_path, env)
    run_cli("init", cwd=tmp_path, env=env, check=True)
    run_cli("encrypt-existing", cwd=tmp_path, env=env, check=True)
    return app


def check_all_rotated(app: App, database: Database, version: int) -> None:
    """Every value decrypts to its original, under ``version`` only."""
    with keyturn.open(app.config) as store:
        for i, a, b in database.rows("SELECT id, a, b FROM secrets"):
            assert a.startswith(f"kt1:{version}:")
            assert store.decrypt(a, context="secrets.a") == f"sk_{i}"
            if i % 10 == 0:
                assert b is None
            else:
                assert b.startswith(f"kt1:{version}:")
                assert store.decrypt(b, context=f"secrets.b#{i}") == f"tok_{i}"


def wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def helper_pids(parent: int) -> list[int]:
    """The rotate helpers the coordinator ``parent`` started (its child processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"keyturn.ops.rotate_helper" in cmd:
                pids.append(int(entry.name))
    return pids


def replay_journal(
    journal: Path, expected: dict[int, str | None], app: Any, err: str
) -> dict[int, str | None]:
    """What an app process's journal says each row holds now, starting from
    ``expected``; the app (a finished Popen) must have seen no error and done work."""
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert not [e for e in entries if "error" in e], err
    assert app.returncode == 0, err
    assert len(entries) > 20, "the app hardly ran during the rotation"
    for entry in entries:
        if entry.get("deleted"):
            expected.pop(entry["id"], None)
        else:
            expected[entry["id"]] = entry["api_key"]
    return expected


def kill_mid_job_and_resume(rotation: Any, database: Database, resume: Callable[[], Any]) -> None:
    """SIGKILL ``rotation`` at a random moment once its job exists, then ``resume()``
    (a finished process) must report that job resumed onto key v2."""
    wait_for(lambda: bool(database.rows("SELECT id FROM keyturn_jobs")))
    time.sleep(random.uniform(0.1, 0.5))
    rotation.send_signal(signal.SIGKILL)
    rotation.wait()
    time.sleep(0.3)
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed"] is True and report["new_version"] == 2
    time.sleep(0.3)
