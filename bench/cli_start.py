"""How long a keyturn process takes to start, against the floor of its CLI framework
(goals, issue 23: `keyturn --help` within 3x of `python -c "import click"`; a
command on SQLite imports neither the PostgreSQL nor the MySQL dialect; a whole
`keyturn rotate` process at 100,000 rows at least 0.75x of the bare loop's).

Usage: .venv/bin/python bench/cli_start.py [--rounds 15] [--rotate-rows 100000]
       [--servers postgresql,mysql]

Each figure is the median of ROUNDS whole processes (start, import, run, exit),
measured from here; `python -c pass` is shown for scale. The rotation: the bare
loop of bench/rotate.py as a process of its own (sqlite3 and cryptography only)
against `keyturn rotate --yes` and `--no-backup`, best of 3, on fresh copies.
--servers also times `keyturn status` on the local PostgreSQL and MariaDB (a
table of 100 rows, initialized), as ROUNDS whole processes each, and opening one
connection in this process (median of ROUNDS, each on a new engine, after one
first) through keyturn's engine and through SQLAlchemy's defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DIALECTS = ("sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql")


def seconds(args: list[str], cwd: Path, rounds: int) -> float:
    """The median wall time of ``args`` run ``rounds`` times."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(args, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def imported(args: list[str], cwd: Path) -> set[str]:
    """The modules a process imported (from -X importtime)."""
    proc = subprocess.run(
        [args[0], "-X", "importtime", *args[1:]], cwd=cwd, capture_output=True, text=True
    )
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}


BARE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rotate import bare_rotate
bare_rotate(Path(sys.argv[1]), AESGCM(bytes.fromhex(sys.argv[3])))
"""


def whole_rotation(rows: int) -> None:
    """`keyturn rotate` as a process against the bare loop as a process."""
    sys.path.insert(0, str(Path(__file__).parent))
    from rotate import build  # bench/rotate.py

    import keyturn

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build(base, rows)
        with keyturn.open(base / "keyturn.toml") as store:
            key = store.keyring._keys[1].key.hex()
        runs = {
            "bare loop (process)": [
                sys.executable,
                "-c",
                BARE,
                "{dir}",
                str(Path(__file__).parent),
                key,
            ],
            "keyturn rotate --no-backup": [
                sys.executable,
                "-m",
                "keyturn",
                "rotate",
                "--yes",
                "--no-backup",
            ],
            "keyturn rotate": [sys.executable, "-m", "keyturn", "rotate", "--yes"],
        }
        best: dict[str, float] = {}
        for _ in range(3):
            for name, args in runs.items():
                work = Path(tmp) / "run"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)
                argv = [a.replace("{dir}", str(work)) for a in args]
                started = time.perf_counter()
                subprocess.run(argv, cwd=work, check=True, capture_output=True)
                elapsed = time.perf_counter() - started
                best[name] = min(best.get(name, elapsed), elapsed)
    bare = best["bare loop (process)"]
    print(f"whole processes, rotating {rows:,} rows x 2 columns, best of 3:")
    for name, seconds_ in best.items():
        print(f"  {name:<28} {seconds_:6.2f} s  {bare / seconds_:.2f}x (goal 0.75x)")


def status_on_servers(kinds: list[str], rounds: int) -> None:
    """`keyturn status` as a whole process on each server, and opening one connection
    here through keyturn's engine and SQLAlchemy's defaults; medians of ``rounds``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from rotate_servers import SERVERS, drop_db, make_db  # bench/rotate_servers.py
    from sqlalchemy import create_engine, text

    from keyturn.db.database import connect

    for kind in kinds:
        name = make_db(kind)
        try:
            url = SERVERS[kind] + name
            engine = create_engine(url)
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, secret TEXT)"))
                rows = [{"i": i, "s": f"s{i}"} for i in range(100)]
                conn.execute(text("INSERT INTO users VALUES (:i, :s)"), rows)
            engine.dispose()
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                (work / "keyturn.toml").write_text(
                    f'database = "{url}"\n[[columns]]\ntable = "users"\ncolumn = "secret"\n'
                )
                keyturn = [sys.executable, "-m", "keyturn"]
                subprocess.run([*keyturn, "init"], cwd=work, check=True, capture_output=True)
                status = seconds([*keyturn, "status"], work, rounds)
            print(f"keyturn status ({kind}):{' ' * (10 - len(kind))}{status * 1000:6.1f} ms")
            ours, plain = (opening(make, url, rounds) for make in (connect, create_engine))
            print(f"  one connection: keyturn's {ours * 1000:.1f} ms, plain {plain * 1000:.1f} ms")
        finally:
            drop_db(kind, name)


def opening(make: Any, url: str, rounds: int) -> float:
    """The median time to open a connection on a new engine from ``make(url)``."""
    times = []
    for _ in range(rounds + 1):  # the first one also imports and sets up the dialect
        engine = make(url)
        started = time.perf_counter()
        with engine.connect():
            times.append(time.perf_counter() - started)
        engine.dispose()
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rotate-rows", type=int, default=100_000)
    parser.add_argument("--servers", default="", help="e.g. postgresql,mysql: status there too")
    options = parser.parse_args()
    rounds = options.rounds
    python = sys.executable
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        conn = sqlite3.connect(work / "app.db")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, secret TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"s{i}") for i in range(100)])
        conn.commit()
        conn.close()
        (work / "keyturn.toml").write_text(
            'database = "sqlite:///app.db"\n[[columns]]\ntable = "users"\ncolumn = "secret"\n'
        )
        keyturn = [python, "-m", "keyturn"]
        subprocess.run([*keyturn, "init"], cwd=work, check=True, capture_output=True)
        floor = seconds([python, "-c", "pass"], work, rounds)
        click = seconds([python, "-c", "import click"], work, rounds)
        helped = seconds([*keyturn, "--help"], work, rounds)
        status = seconds([*keyturn, "status"], work, rounds)
        loaded = imported([*keyturn, "status"], work)
    print(f"python -c pass:           {floor * 1000:6.1f} ms")
    print(f'python -c "import click": {click * 1000:6.1f} ms')
    print(
        f"keyturn --help:           {helped * 1000:6.1f} ms  ({helped / click:.2f}x click; goal 3x)"
    )
    print(f"keyturn status (SQLite):  {status * 1000:6.1f} ms")
    others = [d for d in DIALECTS if d in loaded]
    print(f"status on SQLite imports: {', '.join(others) or 'no other dialect'} (goal: none)")
    if options.servers:
        status_on_servers(options.servers.split(","), rounds)
    if options.rotate_rows:
        whole_rotation(options.rotate_rows)


if __name__ == "__main__":
    main()
