"""`keyturn status` at a million rows, against a bare GROUP BY on the token headers
(goal: at most 1.3x).

Usage: .venv/bin/python bench/status_scale.py [--rows 1000000] [--rounds 5]

One SQLite column of ROWS tokens (two key versions, some plaintext, NULL and '').
`status` counts every value by its header in the database; the baseline is the
query anyone would write to count tokens per version: GROUP BY the text between
"kt1:" and the next colon. Best round of each.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import keyturn
from keyturn.cli import cli
from keyturn.ops.rotate import RotateOptions, Rotator
from keyturn.ops.status import status

BARE = (
    "SELECT substr(a, 5, instr(substr(a, 5), ':') - 1), count(*) FROM secrets "
    "WHERE a LIKE 'kt1:%' GROUP BY 1"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "keyturn.toml"
        config.write_text(
            'database = "sqlite:///app.db"\n[[columns]]\ntable = "secrets"\ncolumn = "a"\n'
        )
        db = sqlite3.connect(work / "app.db")
        db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a TEXT)")
        db.commit()
        cli.main(["--config", str(config), "init"], standalone_mode=False)
        with keyturn.open(config) as store:
            sample = [store.encrypt(f"sk_live_{i:06d}", context="secrets.a") for i in range(1000)]
            Rotator(store, RotateOptions(backup=False)).run()  # a second version, empty
            newer = [store.encrypt(f"sk_live_{i:06d}", context="secrets.a") for i in range(1000)]

        def value(i: int) -> str | None:
            if i % 100 == 0:
                return None if i % 200 else ""
            if i % 97 == 0:
                return f"plaintext-{i}"
            return (newer if i % 2 else sample)[i % 1000]

        db.executemany(
            "INSERT INTO secrets VALUES (?, ?)", ((i, value(i)) for i in range(args.rows))
        )
        db.commit()
        best = {"keyturn status": float("inf"), "bare GROUP BY": float("inf")}
        with keyturn.open(config) as store:
            for _ in range(args.rounds):
                started = time.perf_counter()
                report = status(store)
                best["keyturn status"] = min(best["keyturn status"], time.perf_counter() - started)
                started = time.perf_counter()
                db.execute(BARE).fetchall()
                best["bare GROUP BY"] = min(best["bare GROUP BY"], time.perf_counter() - started)
        db.close()
    (column,) = report.columns
    print(
        f"status of {args.rows:,} rows (SQLite), best of {args.rounds}: {column.by_version}, "
        f"{column.plaintext:,} plaintext, {column.empty:,} empty"
    )
    bare = best["bare GROUP BY"]
    for name, seconds in best.items():
        print(f"   {name:<16} {seconds:6.3f} s  {seconds / bare:5.2f}x")


if __name__ == "__main__":
    main()
