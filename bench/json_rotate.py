"""Rotating secrets kept as fields of JSON documents, against rotating the same
secrets kept as plain columns (goal: at most 1.5x the time).

Usage: .venv/bin/python bench/json_rotate.py [--rows 200000] [--rounds 3]

Two SQLite databases with ROWS rows each, two secrets a row: one as columns
``secrets(id, a, b)``, one as ``$.apiKey`` and ``$.oauth.refresh_token`` of a
small document in ``docs(id, doc)`` next to plain fields. Each round rotates a
fresh copy of each (``keyturn rotate``, in-process, with and without its
backup, with one worker and with the CLI's default ``--workers auto``); the
best round of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import keyturn
from keyturn.cli import cli
from keyturn.ops.rotate import RotateOptions, Rotator, most_auto_workers

COLUMNS = """database = "sqlite:///app.db"
[[columns]]
table = "secrets"
column = "a"
[[columns]]
table = "secrets"
column = "b"
"""
DOCUMENTS = """database = "sqlite:///app.db"
[[columns]]
table = "docs"
column = "doc"
json_fields = ["$.apiKey", "$.oauth.refresh_token"]
"""


def build(workdir: Path, rows: int, documents: bool) -> None:
    """An initialized database with ``rows`` rows, two v1 tokens each."""
    workdir.mkdir(parents=True)
    db = sqlite3.connect(workdir / "app.db")
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    db.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc TEXT)")
    db.commit()
    (workdir / "keyturn.toml").write_text(DOCUMENTS if documents else COLUMNS)
    cli.main(["--config", str(workdir / "keyturn.toml"), "init"], standalone_mode=False)
    with keyturn.open(workdir / "keyturn.toml") as store:
        for start in range(1, rows + 1, 50_000):
            ids = range(start, min(start + 50_000, rows + 1))
            if documents:
                db.executemany(
                    "INSERT INTO docs VALUES (?, ?)",
                    [
                        (
                            i,
                            json.dumps(
                                {
                                    "name": f"github-{i}",
                                    "apiKey": store.encrypt(
                                        f"sk_live_{i:012d}_abcdefghij", context="docs.doc$.apiKey"
                                    ),
                                    "oauth": {
                                        "refresh_token": store.encrypt(
                                            f"ghp_{i:012d}_klmnopqrstuv",
                                            context="docs.doc$.oauth.refresh_token",
                                        ),
                                        "scope": ["repo", "user"],
                                    },
                                    "retries": 3,
                                }
                            ),
                        )
                        for i in ids
                    ],
                )
            else:
                db.executemany(
                    "INSERT INTO secrets VALUES (?, ?, ?)",
                    [
                        (
                            i,
                            store.encrypt(f"sk_live_{i:012d}_abcdefghij", context="secrets.a"),
                            store.encrypt(f"ghp_{i:012d}_klmnopqrstuv", context="secrets.b"),
                        )
                        for i in ids
                    ],
                )
            db.commit()
    db.close()


# (label, backup, --workers auto): one worker, then the CLI's default, which walks
# alone for half a second and adds a helper per idle core.
RUNS = [
    ("--no-backup", False, False),
    ("with backup", True, False),
    ("--workers auto --no-backup", False, True),
    ("default (auto, backup)", True, True),
]


def rotate(workdir: Path, backup: bool, auto: bool) -> float:
    if auto:  # as the CLI sets it up
        options = RotateOptions(backup=backup, workers=most_auto_workers(), auto_workers=True)
    else:
        options = RotateOptions(backup=backup)
    with keyturn.open(workdir / "keyturn.toml") as store:
        started = time.perf_counter()
        report = Rotator(store, options).run()
        elapsed = time.perf_counter() - started
    assert report.totals["rotated"] > 0 and report.failed == 0, report.totals
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, documents in (("columns", False), ("documents", True)):
            build(work / name, args.rows, documents)
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for label, backup, auto in RUNS:
                for name in ("columns", "documents"):
                    run = work / "run"
                    shutil.rmtree(run, ignore_errors=True)
                    shutil.copytree(work / name, run)
                    results.setdefault((name, label), []).append(rotate(run, backup, auto))
    values = args.rows * 2
    print(f"rotate {args.rows:,} rows x 2 secrets ({values:,} values), best of {args.rounds}")
    print(f"   {'':<44} {'seconds':>8} {'values/s':>10} {'vs columns':>11}")
    for label, _, _ in RUNS:
        columns = min(results[("columns", label)])
        for name in ("columns", "documents"):
            best = min(results[(name, label)])
            row = f"{name}, {label}"
            print(f"   {row:<44} {best:>8.2f} {values / best:>10,.0f} {best / columns:>10.2f}x")


if __name__ == "__main__":
    main()
