"""A model-based concurrency test: keyturn's operations and two live app processes
interleaved at random, with SIGKILLs, on SQLite, PostgreSQL and MariaDB.

A seeded scheduler starts operations (rotate, rotate --workers 2, rotate-kek,
destroy-key, prune, restore, encrypt-existing), sometimes two at once, and
kills some of them at a random moment, while two app processes (model_app.py)
read, write (sealed or plaintext) and delete their own rows. Afterwards, with
every process stopped and an interrupted rotation resumed, the invariants:

- every row holds the last value its app committed (or, for a write cut by a
  kill, the value before or after it), decrypted by a fresh process;
- no row an app deleted is back;
- the keyring opens with the KEK in the key file; every version that a value or
  a backed-up token names exists;
- no job is left running; no operation failed (exit 1: rows it could not
  re-encrypt, a database error); no app read gave back another value or an error.

The schedule is reproducible from its seed (printed on failure); replay with
KEYTURN_MODEL_SEED=N. KEYTURN_MODEL_STEPS sets the length (``make soak`` runs
long schedules outside the suite).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, backed_up, base_env, key_file

import keyturn
from keyturn._core.tokens import version_of

ROWS = 300
APP = Path(__file__).parents[1] / "model_app.py"
STEPS = int(os.environ.get("KEYTURN_MODEL_STEPS", "10"))


def model_app(database: Database, tmp_path: Path) -> App:
    database.execute("CREATE TABLE app_secrets (id INTEGER PRIMARY KEY, value TEXT)")
    from sqlalchemy import create_engine, text

    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO app_secrets VALUES (:i, :v)"),
            [{"i": i, "v": f"init-{i}"} for i in range(1, ROWS + 1)],
        )
    engine.dispose()
    key_file(tmp_path / "kek")
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\nkek = "file:kek"\n'
        '[[columns]]\ntable = "app_secrets"\ncolumn = "value"\nbind = "row"\n'
        "[apps]\nrefresh_seconds = 2\nwrite_margin_seconds = 1\n"
    )
    app = App(tmp_path, base_env())
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    return app


class Scheduler:
    """Runs the seeded schedule of keyturn operations against the app directory."""

    OPERATIONS = (
        "rotate", "rotate2", "rotate-kek", "destroy-key", "prune", "restore", "encrypt",
        "runbook",
    )  # fmt: skip

    def __init__(self, app: App, database: Database, rng: random.Random) -> None:
        self.app, self.database, self.rng = app, database, rng
        self.keks = 0
        self.log: list[str] = []

    def args(self, name: str) -> list[str]:
        rate = ["--max-rate", str(self.rng.choice([300, 1000, 5000]))]
        if name == "rotate":
            return ["rotate", "--yes", *rate, *(["--no-backup"] if self.rng.random() < 0.3 else [])]
        if name == "rotate2":
            return ["rotate", "--yes", "--workers", "2", "--rows-per-chunk", "60",
                    "--lease-seconds", "3", *rate]  # fmt: skip
        if name == "rotate-kek":
            self.keks += 1
            new = key_file(self.app.dir / f"new{self.keks}.kek")
            return ["rotate-kek", "--new-kek-file", new.name, "--yes"]
        if name == "destroy-key":
            versions = [v for (v,) in self.database.rows("SELECT version FROM keyturn_keys")]
            return ["destroy-key", str(self.rng.choice(versions)), "--yes"]
        if name in ("prune", "restore"):
            found = [j for (j,) in self.database.rows("SELECT id FROM keyturn_jobs")]
            job = self.rng.choice(found) if found else "000000000000"
            return [name, job, "--yes"]
        return ["encrypt-existing"]

    def run(self, args: list[str]) -> int:
        proc = self.app.cli(*args)
        code = proc.returncode
        said = proc.stderr.strip().splitlines()
        # An operation that failed says why on its last line (never a secret).
        self.log.append(
            f"{' '.join(args)} -> {code}" + (f": {said[-1]}" if code == 1 and said else "")
        )
        return code

    def runbook(self) -> None:
        """ROTATION.md's 'after a DEK leak': rotate, then destroy the old version at once
        (refused within the app contract's grace) or after it."""
        if self.run(["rotate", "--yes", "--no-backup", "--max-rate", "5000"]) != 0:
            return
        old = max(v for (v,) in self.database.rows("SELECT version FROM keyturn_keys")) - 1
        time.sleep(self.rng.choice([0, 0, 3.5]))
        self.run(["destroy-key", str(old), "--yes"])

    def step(self) -> None:
        names = [self.rng.choice(self.OPERATIONS)]
        if names == ["runbook"]:
            self.runbook()
            return
        if self.rng.random() < 0.35:
            names.append(self.rng.choice(self.OPERATIONS[:-1]))
        procs = []
        for name in names:
            args = self.args(name)
            # stderr to a file: a failure's reason goes into the schedule's log.
            said = (self.app.dir / f"step{len(self.log)}-{len(procs)}.err").open("w+")
            procs.append((args, self.app.start(*args, output=said.fileno()), said))
            time.sleep(self.rng.uniform(0, 0.3))
        kill_at = self.rng.uniform(0.2, 2.5) if self.rng.random() < 0.35 else None
        victim = self.rng.randrange(len(procs))
        started = time.monotonic()
        for k, (args, proc, said) in enumerate(procs):
            if kill_at is not None and k == victim:
                time.sleep(max(0.0, kill_at - (time.monotonic() - started)))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    for pid in _children(proc.pid):  # rotate --workers 2: its helper too
                        os.kill(pid, signal.SIGKILL)
            code = proc.wait(timeout=300)
            said.seek(0)
            last = said.read().strip().splitlines()[-1:]
            said.close()
            self.log.append(
                f"{' '.join(args)} -> {code}" + (f": {last[0]}" if code == 1 and last else "")
            )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[1] == str(pid):
                found.append(int(entry.name))
    return found


def expected_rows(journals: list[Path]) -> tuple[dict[int, set[Any]], list[str]]:
    """Per row, the values it may hold (None: deleted); and the apps' complaints."""
    allowed: dict[int, set[Any]] = {i: {f"init-{i}"} for i in range(1, ROWS + 1)}
    bad: list[str] = []
    for path in journals:
        pending: dict[int, Any] = {}
        for line in path.read_text().splitlines():
            try:
                kind, row, value = json.loads(line)
            except ValueError:
                continue  # the last line of a killed app may be cut short
            if kind == "intent":
                pending[row] = value
                allowed[row] = allowed[row] | {value}
            elif kind == "done":
                allowed[row] = {pending.pop(row)}
            elif kind == "bad":
                bad.append(f"row {row}: {value}")
            elif kind == "dberror":
                pass  # the pending write stays either way
    return allowed, bad


def check_invariants(app: App, database: Database, journals: list[Path]) -> None:
    allowed, bad = expected_rows(journals)
    assert not bad, f"an app read failed: {bad[:5]}"
    assert not database.rows("SELECT id FROM keyturn_jobs WHERE state = 'running'")
    with keyturn.open(app.config) as store:  # the keyring opens with the key file's KEK
        present = dict(database.rows("SELECT id, value FROM app_secrets"))
        for row, values in allowed.items():
            if row not in present:
                assert None in values, f"row {row} vanished"
                continue
            stored = present[row]
            got = stored
            if stored.startswith("kt1:"):
                got = store.decrypt(stored, context=f"app_secrets.value#{row}")
            assert got in values, f"row {row} holds {got!r}, expected one of {values}"
        for _, _, _, old in backed_up(database.url):
            assert version_of(old) in store.keyring.versions, "a backup names a lost version"


@pytest.mark.timeout(max(900, STEPS * 20))
def test_random_interleavings_lose_nothing(database: Database, tmp_path: Path) -> None:
    seed = int(os.environ.get("KEYTURN_MODEL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    app = model_app(database, tmp_path)
    journals = [tmp_path / f"app{n}.journal" for n in range(2)]
    scheduler = Scheduler(app, database, rng)
    stop, errors = tmp_path / "stop", [tmp_path / f"app{n}.stderr" for n in range(2)]
    apps: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(2):
            args = [str(app.config), str(n), str(journals[n]), str(rng.randrange(1 << 30))]
            with errors[n].open("wb") as err:
                apps.append(
                    subprocess.Popen(
                        [sys.executable, str(APP), *args, str(stop)],
                        cwd=tmp_path,
                        env=app.env,
                        stderr=err,
                    )
                )
        for _ in range(STEPS):
            scheduler.step()
        if rng.random() < 0.5:
            apps[rng.randrange(2)].send_signal(signal.SIGKILL)  # an app dies mid-write
        stop.touch()
        for proc in apps:
            proc.wait(timeout=60)
        for path in errors:
            assert "Traceback" not in path.read_text(), path.read_text()
        failed = [entry for entry in scheduler.log if "-> 1" in entry]
        assert not failed, f"operations failed: {failed}"
        final = app.cli("rotate", "--yes", "--wait", "60")  # resumes a killed rotation
        assert final.returncode == 0, final.stderr
        check_invariants(app, database, journals)
        print(f"seed {seed}:", *scheduler.log, sep="\n  ")  # shown with pytest -s
    except BaseException as exc:
        for proc in apps:
            if proc.poll() is None:
                proc.kill()
        schedule = "\n  ".join(scheduler.log)
        raise AssertionError(
            f"model run failed with seed {seed} (replay: KEYTURN_MODEL_SEED={seed}); "
            f"schedule:\n  {schedule}"
        ) from exc
