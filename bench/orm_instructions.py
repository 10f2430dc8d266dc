"""Loading ORM rows with an encrypted column, counted in CPU instructions instead of
timed: figures that repeat exactly on a machine whose timings spread by 20-30%.

Usage: .venv/bin/python bench/orm_instructions.py [--rows 2000] [--loads 3]

For SQLAlchemy (bench/orm_load.py's tables) and Django (bench/django_load.py's),
each under valgrind's callgrind (Debian package ``valgrind``), in a process of
its own: the setup alone, then the setup and LOADS loads of the plain table, of
the encrypted table, and of the bare decrypt loop over the same tokens. The
setup's count is taken off each, leaving instructions per row. The floor is the
plain row plus the bare decryption; what a column type adds beyond that floor
is its own cost. Instructions are not time (AES-GCM runs many per cycle, an
ORM's interpreted code few): the timed benches give the ratios users see.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = ("setup", "plain", "encrypted", "bare")


def child(orm: str, run: str, rows: int, loads: int) -> None:
    """One measured process: the setup, one warm-up of each load, then ``run``."""
    sys.path.insert(0, str(Path(__file__).parent))
    work = Path(tempfile.mkdtemp())
    if orm == "sqlalchemy":
        import orm_load

        load_table, store, tokens = orm_load.prepare(work, rows)

        def bare() -> float:
            return orm_load.bare_decrypt(store, tokens)
    else:
        import django_load

        load_table, bare = django_load.prepare(work, rows)
    load_table("plain"), load_table("encrypted"), bare()  # compiled statements, caches
    for _ in range(loads if run != "setup" else 0):
        bare() if run == "bare" else load_table(run)


def count(orm: str, run: str, rows: int, loads: int) -> int:
    """Instructions a whole measured process executed."""
    measured = [sys.executable, __file__, "--child", orm, run, f"--rows={rows}", f"--loads={loads}"]
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *measured],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts each run
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--orms", default="sqlalchemy,django")
    parser.add_argument("--child", nargs=2, metavar=("ORM", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.rows, args.loads)
        return
    if shutil.which("valgrind") is None:
        print("orm_instructions: skipped, needs valgrind (Debian: apt-get install valgrind)")
        return
    print(f"instructions per row: {args.rows:,} rows, {args.loads} loads each, callgrind")
    for orm in args.orms.split(","):
        total = {run: count(orm, run, args.rows, args.loads) for run in RUNS}
        per = {r: (total[r] - total["setup"]) / (args.rows * args.loads) for r in RUNS[1:]}
        floor = per["plain"] + per["bare"]
        print(f"{orm:<10}  plain row        {per['plain']:8,.0f}   1.00x")
        print(f"{orm:<10}  bare decrypt     {per['bare']:8,.0f}")
        print(f"{orm:<10}  floor            {floor:8,.0f}   {floor / per['plain']:.2f}x")
        encrypted = per["encrypted"]
        print(f"{orm:<10}  encrypted row    {encrypted:8,.0f}   {encrypted / per['plain']:.2f}x")
        print(f"{orm:<10}  above the floor  {encrypted - floor:8,.0f}")


if __name__ == "__main__":
    main()
