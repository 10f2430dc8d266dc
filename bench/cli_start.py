"""How long a keyturn process takes to start, against the floor of its CLI framework
(goals, issue 23: `keyturn --help` within 3x of `python -c "import click"`; a
command on SQLite imports neither the PostgreSQL nor the MySQL dialect).

Usage: .venv/bin/python bench/cli_start.py [--rounds 15]

Each figure is the median of ROUNDS whole processes (start, import, run, exit),
measured from here; `python -c pass` is shown for scale.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
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


if __name__ == "__main__":
    main()
