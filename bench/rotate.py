"""Rotation throughput, rotate-kek cost by table size, and peak memory.

Usage: .venv/bin/python bench/rotate.py [--rows 150000] [--big 1000000]

1. `keyturn rotate` on ROWS rows x 2 columns in SQLite, against a bare limit
   loop on an identical copy of the database: keyset-paged SELECT, AESGCM
   decrypt + encrypt a page at a time (:func:`reseal`), executemany UPDATE by
   primary key, a commit per batch, the collector relaxed as keyturn's walk
   relaxes it; no compare-and-swap, no checkpoints, no sweep. Goals: the
   default at least 0.8x, --no-backup at least 0.9x. Also with --workers N
   (default 2), and --workers auto: goal, never slower than one worker. The
   CLI's default is --workers auto with the backup: "--workers auto (backup)";
   "keyturn rotate (backup)" is one worker with it.
2. `rotate-kek` on 1,000 and BIG rows (goal: the same within noise, < 100 ms).
3. Peak RSS of a `keyturn rotate` process at ROWS/10 and BIG rows (bounded
   by the batch, not the table).
4. `restore` of a ROWS-row rotation from its packed backup.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import keyturn
from keyturn._core.kek import LocalKEK
from keyturn.cli import cli
from keyturn.engine.walk import _WALK_THRESHOLD
from keyturn.ops.rotate import RotateOptions, Rotator, most_auto_workers
from keyturn.ops.rotate_kek import rotate_kek

CONFIG = """database = "sqlite:///app.db"
[[columns]]
table = "secrets"
column = "a"
[[columns]]
table = "secrets"
column = "b"
"""


def build(workdir: Path, rows: int, columns: int = 2) -> None:
    """An initialized database with ``rows`` rows of v1 tokens."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(workdir / "app.db")
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    db.commit()
    db.close()
    config = (
        CONFIG if columns == 2 else CONFIG.split('[[columns]]\ntable = "secrets"\ncolumn = "b"')[0]
    )
    (workdir / "keyturn.toml").write_text(config)
    cli.main(["--config", str(workdir / "keyturn.toml"), "init"], standalone_mode=False)
    with keyturn.open(workdir / "keyturn.toml") as store:
        db = sqlite3.connect(workdir / "app.db")
        for start in range(1, rows + 1, 50_000):
            batch = [
                (
                    i,
                    store.encrypt(f"sk_live_{i:012d}_abcdefghij", context="secrets.a"),
                    store.encrypt(f"ghp_{i:012d}_klmnopqrstuv", context="secrets.b"),
                )
                for i in range(start, min(start + 50_000, rows + 1))
            ]
            db.executemany("INSERT INTO secrets VALUES (?, ?, ?)", batch)
            db.commit()
        db.close()


def pages(
    db: sqlite3.Connection, batch: int = 5000, columns: str = "a, b"
) -> Iterator[list[tuple[Any, ...]]]:
    """Every row of ``secrets`` (its id, then ``columns``), a keyset page at a time,
    each fetched whole before it is handed out (so the caller may write between
    pages, as the bare loops do)."""
    query = f"SELECT id, {columns} FROM secrets WHERE id > ? ORDER BY id LIMIT ?"
    last = 0
    while True:
        rows = db.execute(query, (last, batch)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def turner(old: AESGCM) -> Callable[[str, str], str]:
    """A v1 token under ``old`` -> a v2 token under a new key, as bare as it gets."""
    new = AESGCM(AESGCM.generate_key(256))

    def turn(token: str, context: str) -> str:
        payload = token.split(":", 2)[2]
        blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        plain = old.decrypt(blob[:12], blob[12:], ("kt1:1:" + context).encode())
        nonce = os.urandom(12)
        out = nonce + new.encrypt(nonce, plain, ("kt1:2:" + context).encode())
        return "kt1:2:" + base64.urlsafe_b64encode(out).rstrip(b"=").decode()

    return turn


def bare_rotate(workdir: Path, old: AESGCM, batch: int = 5000) -> float:
    """The limit: decrypt + encrypt + executemany UPDATE, nothing else; each page's
    columns re-encrypted as tightly as we can write it (:func:`reseal`), with the
    collector relaxed as keyturn's walk relaxes it."""
    new = AESGCM(AESGCM.generate_key(256))
    started = time.perf_counter()
    db = sqlite3.connect(workdir / "app.db")
    with collector_relaxed():
        for rows in pages(db, batch):
            ids, a, b = zip(*rows, strict=True)
            fresh_a = reseal(old, new, a, "secrets.a", 2)
            fresh_b = reseal(old, new, b, "secrets.b", 2)
            db.executemany(
                "UPDATE secrets SET a = ?, b = ? WHERE id = ?",
                zip(fresh_a, fresh_b, ids, strict=True),
            )
            db.commit()
    db.close()
    return time.perf_counter() - started


URLSAFE = bytes.maketrans(b"+/", b"-_")
STANDARD = bytes.maketrans(b"-_", b"+/")
PADDING = {0: b"", 2: b"==", 3: b"="}


def reseal(
    old: AESGCM, new: AESGCM, tokens: Sequence[str], context: str, version: int
) -> list[str]:
    """Each token opened with ``old`` and sealed with ``new`` as ``version``, as
    tight as we could write it: one nonce draw a batch, binascii without base64's
    wrappers, each AAD built once, as keyturn's own loop does; no checks. Sealing a
    token at a time (:func:`turner`) is slower (docs/PERFORMANCE.md)."""
    nonces = os.urandom(12 * len(tokens))
    a2b, b2a = binascii.a2b_base64, binascii.b2a_base64
    opened, sealed = old.decrypt, new.encrypt
    header = f"kt1:{version}:"
    sealed_aad = f"{header}{context}".encode()
    aads: dict[str, bytes] = {}
    out: list[str] = []
    append = out.append
    end = 0
    for token in tokens:
        head, _, body = token.rpartition(":")
        aad = aads.get(head)
        if aad is None:
            aad = aads[head] = f"{head}:{context}".encode()
        blob = a2b(body.encode().translate(STANDARD) + PADDING[len(body) % 4])
        plain = opened(blob[:12], blob[12:], aad)
        start, end = end, end + 12
        nonce = nonces[start:end]
        blob = nonce + sealed(nonce, plain, sealed_aad)
        append(header + b2a(blob, newline=False).translate(URLSAFE).rstrip(b"=").decode())
    return out


@contextmanager
def collector_relaxed() -> Iterator[None]:
    """The cyclic collector's first threshold raised for a bare loop as keyturn's
    walk raises it (engine/walk.py): no baseline pays for passes keyturn skips."""
    found = gc.get_threshold()
    gc.set_threshold(_WALK_THRESHOLD, *found[1:])
    try:
        yield
    finally:
        gc.set_threshold(*found)


def keyturn_rotate(workdir: Path, backup: bool, workers: int = 1, auto: bool = False) -> float:
    options = RotateOptions(backup=backup, workers=workers, auto_workers=auto)
    with keyturn.open(workdir / "keyturn.toml") as store:
        started = time.perf_counter()
        report = Rotator(store, options).run()
        elapsed = time.perf_counter() - started
    assert report.totals["rotated"] > 0 and report.failed == 0
    return elapsed


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    base = tmp / "base"
    build(base, args.rows)
    with keyturn.open(base / "keyturn.toml") as store:
        old = AESGCM(store.keyring._keys[1].key)
    values = args.rows * 2
    results: dict[str, list[float]] = {
        "bare loop": [],
        "keyturn rotate --no-backup": [],
        "--workers auto --no-backup": [],
        "--workers auto (backup)": [],  # the CLI's default
        "keyturn rotate (backup)": [],  # a backed-up run last: backup_size reads it
    }
    if args.workers > 1:
        results[f"--workers {args.workers} --no-backup"] = []
        results[f"--workers {args.workers} (backup)"] = []
    for _ in range(args.rounds):
        for name in results:
            run = tmp / "run"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run)
            if name == "bare loop":
                results[name].append(bare_rotate(run, old))
            elif name.startswith("--workers auto"):
                backup = "(backup)" in name
                results[name].append(keyturn_rotate(run, backup, most_auto_workers(), auto=True))
            else:
                workers = args.workers if name.startswith("--workers") else 1
                results[name].append(keyturn_rotate(run, "(backup)" in name, workers))
    bare = min(results["bare loop"])
    kept, tokens_, grown = backup_size(base, tmp / "run")
    print(f"\n1. rotate {args.rows:,} rows x 2 columns ({values:,} values), best of {args.rounds}")
    print(f"   {'':<28} {'seconds':>8} {'values/s':>10} {'vs bare':>8}")
    for name, times in results.items():
        best = min(times)
        print(f"   {name:<28} {best:>8.2f} {values / best:>10,.0f} {bare / best:>7.2f}x")
    print(
        f"   backup: {kept / 2**20:,.1f} MiB of packs for {tokens_ / 2**20:,.1f} MiB of tokens "
        f"replaced ({kept / tokens_:.2f}x); the database grew {grown / 2**20:,.1f} MiB"
    )


def backup_size(base: Path, run: Path) -> tuple[int, int, int]:
    """The last backed-up run's packs, the tokens they keep, and the file's growth."""
    db = sqlite3.connect(run / "app.db")
    (kept,) = db.execute("SELECT SUM(LENGTH(data)) FROM keyturn_backup_batches").fetchone()
    db.close()
    db = sqlite3.connect(base / "app.db")
    (tokens_,) = db.execute("SELECT SUM(LENGTH(a) + LENGTH(b)) FROM secrets").fetchone()
    db.close()
    grown = (run / "app.db").stat().st_size - (base / "app.db").stat().st_size
    return int(kept), int(tokens_), grown


def kek_cost(args: argparse.Namespace, tmp: Path) -> None:
    print("\n2. rotate-kek (rewrap 3 DEK versions), median of 5")
    for rows in (1_000, args.big):
        work = tmp / f"kek{rows}"
        build(work, rows, columns=1)
        with keyturn.open(work / "keyturn.toml") as store:
            for _ in range(2):
                Rotator(store, RotateOptions(backup=False)).run()
        os.environ["KEYTURN_KEK"] = os.environ["BENCH_KEK"]
        inside, total = [], []
        for _ in range(5):
            with keyturn.open(work / "keyturn.toml") as store:
                new = LocalKEK(os.urandom(32), "bench")
                started = time.perf_counter()
                result = rotate_kek(store, new)
                total.append((time.perf_counter() - started) * 1000)
                inside.append(result.milliseconds)
            os.environ["KEYTURN_KEK"] = new.key_text()
        os.environ["KEYTURN_KEK"] = os.environ["BENCH_KEK"]
        print(
            f"   {rows:>9,} rows: transaction {statistics.median(inside):6.2f} ms, "
            f"call incl. reload {statistics.median(total):6.2f} ms"
        )
        shutil.rmtree(work)


def peak_rss(args: argparse.Namespace, tmp: Path) -> None:
    print("\n3. peak RSS of a `keyturn rotate --yes --no-backup` process")
    for rows in (args.rows // 10, args.big):
        work = tmp / f"rss{rows}"
        build(work, rows, columns=1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyturn", "rotate", "--yes", "--no-backup"],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = time.perf_counter()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
        print(
            f"   {rows:>9,} rows: {usage.ru_maxrss / 1024:6.1f} MiB peak, "
            f"{elapsed:5.1f} s ({rows / elapsed:,.0f} rows/s)"
        )
        shutil.rmtree(work)


def restore_cost(args: argparse.Namespace, tmp: Path) -> None:
    """A rotation's packed backup put back: read, fingerprints compared, swapped."""
    from keyturn.ops.restore import restore_job

    work = tmp / "restore"
    build(work, args.rows)
    with keyturn.open(work / "keyturn.toml") as store:
        job = Rotator(store, RotateOptions(backup=True)).run().to_dict()["job"]
        started = time.perf_counter()
        result = restore_job(store, job)
        elapsed = time.perf_counter() - started
    assert result.restored == 2 * args.rows, result
    print(f"\n4. restore a rotation of {args.rows:,} rows x 2 columns from its backup")
    print(f"   {elapsed:.2f} s ({2 * args.rows / elapsed:,.0f} values/s)")
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["throughput", "kek", "rss", "restore"])
    parser.add_argument(
        "--workers", type=int, default=2, help="also rotate with this many workers (1: not)"
    )
    args = parser.parse_args()
    os.environ["BENCH_KEK"] = os.environ["KEYTURN_KEK"] = os.urandom(32).hex()
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "throughput"):
            throughput(args, Path(tmp))
        if args.only in (None, "kek"):
            kek_cost(args, Path(tmp))
        if args.only in (None, "rss"):
            peak_rss(args, Path(tmp))
        if args.only in (None, "restore"):
            restore_cost(args, Path(tmp))


if __name__ == "__main__":
    main()
