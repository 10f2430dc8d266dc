"""`import-legacy` against its bare loop, and what its width check costs.

Usage: .venv/bin/python bench/import_legacy.py [--rows 200000] [--rounds 3] [--fernet]

ROWS rows of one VARCHAR(255) column in SQLite holding secrets as a Node.js app
sealed them (seed 000's layout: "enc:v1:" + base64 of IV, tag and AES-GCM
ciphertext under SHA-256 of the app's key text), or (--fernet) as Python's Fernet
did. Three runs on identical copies, best of ROUNDS each:
  bare loop        keyset-paged SELECT, the legacy value decoded and opened with a
                   prebuilt key, sealed as a kt1 token (one nonce draw a page,
                   binascii's base64), executemany UPDATE by primary key, a commit
                   per page; no checks, no audit, no width check
  keyturn          `import_legacy(store)`, as `keyturn import-legacy --yes` runs it
  width check      the check import-legacy runs before its first write, alone
Prints each run's time and keyturn against the bare loop.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rotate import URLSAFE, collector_relaxed, pages  # bench/rotate.py

import keyturn
from keyturn.cli import cli
from keyturn.ops import import_legacy as imports

BATCH = 5000
SUFFIX = ":api_keys:v1"
LAYOUTS = {
    "aes-gcm": 'format = "aes-gcm"\nprefix = "enc:v1:"\nkdf = "sha256"\nsuffix = ":api_keys:v1"\n',
    "fernet": 'format = "fernet"\n',
}


def build(workdir: Path, rows: int, layout: str, key_text: str) -> None:
    """An initialized database with ``rows`` legacy values of ``layout``."""
    workdir.mkdir(parents=True)
    if layout == "fernet":
        seal = Fernet(key_text.encode()).encrypt
    else:
        aead = AESGCM(hashlib.sha256((key_text + SUFFIX).encode()).digest())

        def seal(plain: bytes) -> bytes:
            iv = os.urandom(12)
            sealed = aead.encrypt(iv, plain, None)  # ciphertext, then the tag
            return b"enc:v1:" + base64.b64encode(iv + sealed[-16:] + sealed[:-16])

    db = sqlite3.connect(workdir / "app.db")
    db.execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a VARCHAR(255))")
    for start in range(1, rows + 1, 50_000):
        db.executemany(
            "INSERT INTO secrets VALUES (?, ?)",
            [
                (i, seal(f"sk_live_{i:012d}_{os.urandom(12).hex()}".encode()).decode())
                for i in range(start, min(start + 50_000, rows + 1))
            ],
        )
    db.commit()
    db.close()
    (workdir / "keyturn.toml").write_text(
        'database = "sqlite:///app.db"\n[[legacy]]\nname = "old"\nkey_env = "OLD_APP_KEY"\n'
        + LAYOUTS[layout]
        + '[[columns]]\ntable = "secrets"\ncolumn = "a"\nlegacy = "old"\n'
    )
    cli.main(["--config", str(workdir / "keyturn.toml"), "init"], standalone_mode=False)


def bare(workdir: Path, layout: str, key_text: str, dek: AESGCM) -> float:
    """The bare loop (the module's doc), as tight as we could write it."""
    if layout == "fernet":
        opened = Fernet(key_text.encode()).decrypt
    else:
        aead = AESGCM(hashlib.sha256((key_text + SUFFIX).encode()).digest())
        a2b = binascii.a2b_base64

        def opened(value: str) -> bytes:
            raw = a2b(value[7:])  # after "enc:v1:"
            return aead.decrypt(raw[:12], raw[28:] + raw[12:28], None)

    b2a, seal = binascii.b2a_base64, dek.encrypt
    aad = b"kt1:1:secrets.a"
    started = time.perf_counter()
    db = sqlite3.connect(workdir / "app.db")
    with collector_relaxed():
        for rows in pages(db, BATCH, "a"):
            nonces = os.urandom(12 * len(rows))
            out = []
            for j, (i, value) in enumerate(rows):
                nonce = nonces[12 * j : 12 * j + 12]
                token = b2a(nonce + seal(nonce, opened(value), aad), newline=False)
                out.append(("kt1:1:" + token.translate(URLSAFE).rstrip(b"=").decode(), i))
            db.executemany("UPDATE secrets SET a = ? WHERE id = ?", out)
            db.commit()
    db.close()
    return time.perf_counter() - started


def keyturn_import(workdir: Path) -> float:
    with keyturn.open(workdir / "keyturn.toml") as store:
        started = time.perf_counter()
        report = imports.import_legacy(store)
        elapsed = time.perf_counter() - started
    assert not report.failed_rows and report.columns["secrets.a"][imports.IMPORTED] > 0
    return elapsed


def width_check(workdir: Path) -> float:
    with keyturn.open(workdir / "keyturn.toml") as store:
        (column,) = store.bound_columns()
        started = time.perf_counter()
        imports._check_width(store, column, False)  # what import-legacy runs first
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fernet", action="store_true", help="Fernet values, not AES-GCM")
    args = parser.parse_args()
    layout = "fernet" if args.fernet else "aes-gcm"
    key_text = Fernet.generate_key().decode() if args.fernet else os.urandom(24).hex()
    os.environ.setdefault("KEYTURN_KEK", os.urandom(32).hex())
    os.environ["OLD_APP_KEY"] = key_text
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build(base, args.rows, layout, key_text)
        with keyturn.open(base / "keyturn.toml") as store:
            dek = AESGCM(store.keyring._keys[1].key)  # the bench reads the raw DEK on purpose
        runs = {
            "bare loop": lambda w: bare(w, layout, key_text, dek),
            "keyturn import-legacy": keyturn_import,
            "its width check alone": width_check,
        }
        each: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                work = Path(tmp) / "run"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)
                each[name].append(run(work))
    print(f"{args.rows:,} rows of {layout} legacy values, best of {args.rounds}")
    best = {name: min(times) for name, times in each.items()}
    for name, seconds in best.items():
        print(f"  {name:<24} {seconds:>7.2f} s")
    ratios = sorted(
        b / k for b, k in zip(each["bare loop"], each["keyturn import-legacy"], strict=True)
    )
    share = best["its width check alone"] / best["keyturn import-legacy"]
    print(
        f"  keyturn vs the bare loop: {best['bare loop'] / best['keyturn import-legacy']:.2f}x "
        f"(round by round {'  '.join(f'{r:.2f}' for r in ratios)}, median "
        f"{statistics.median(ratios):.2f}x); the width check is {share:.0%} of keyturn's time"
    )


if __name__ == "__main__":
    main()
