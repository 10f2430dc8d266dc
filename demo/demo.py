"""`make demo`: a small app database with plaintext secrets, taken over by keyturn.

Builds demo/work/app.db (users with TOTP seeds, integrations with API keys and
OAuth tokens, all plaintext), then runs the real CLI on it and shows the rows
before and after. Everything lives in demo/work/, recreated on each run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "work"
CONFIG = """\
database = "sqlite:///app.db"

[[columns]]
table = "users"
column = "totp_seed"
primary_key = "id"

[[columns]]
table = "integrations"
column = "api_key"
primary_key = "id"
bind = "row"          # a token copied to another row will not decrypt

[[columns]]
table = "integrations"
column = "oauth_token"
primary_key = "id"

# The app contract (docs/ROTATION.md): app processes re-read the active key at
# least this often. Short here so the demo's old key retires within seconds;
# the defaults are 30 and 60.
[apps]
refresh_seconds = 1
write_margin_seconds = 1
"""


def build_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, totp_seed TEXT);
        CREATE TABLE integrations (
            id INTEGER PRIMARY KEY, provider TEXT, api_key TEXT, oauth_token TEXT);
        """
    )
    conn.executemany(
        "INSERT INTO users (email, totp_seed) VALUES (?, ?)",
        [
            ("ada@example.com", "JBSWY3DPEHPK3PXP"),
            ("bob@example.com", None),
            ("cy@example.com", "KRSXG5CTMVRXEZLU"),
        ],
    )
    conn.executemany(
        "INSERT INTO integrations (provider, api_key, oauth_token) VALUES (?, ?, ?)",
        [
            ("stripe", "sk_live_" + secrets.token_hex(12), None),
            ("github", "ghp_" + secrets.token_hex(18), "gho_" + secrets.token_hex(18)),
            ("google", "AIza" + secrets.token_hex(16), "ya29." + secrets.token_hex(20)),
            ("smtp", "", None),
        ],
    )
    conn.commit()
    conn.close()


def show(title: str) -> None:
    print(f"\n--- {title} ---")
    conn = sqlite3.connect(WORK / "app.db")
    for table, cols in (("users", "id, totp_seed"), ("integrations", "id, api_key, oauth_token")):
        for row in conn.execute(f"SELECT {cols} FROM {table} ORDER BY id"):
            cells = [str(c)[:46] + ("…" if c and len(str(c)) > 46 else "") for c in row[1:]]
            print(f"  {table}#{row[0]}: " + " | ".join(cells))
    conn.close()


def run(*args: str) -> None:
    print(f"\n$ keyturn {' '.join(args)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "keyturn", *args],
        cwd=WORK,
        env=ENV,
        check=True,
        stdin=subprocess.DEVNULL,
    )


ENV = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    build_db(WORK / "app.db")
    (WORK / "keyturn.toml").write_text(CONFIG)
    print(f"A demo app database at {WORK / 'app.db'} stores its secrets in plaintext.")
    show("before: what a stolen backup would reveal")
    print("\nNo KEK is set, so `init` generates a dev key file (in production it refuses).")
    run("init")
    run("encrypt-existing", "--dry-run")
    run("encrypt-existing")
    show("after: only kt1 tokens, bound to table.column (and row)")
    run("status")
    print("\nThe app reads a secret through the library, e.g. users#1's TOTP seed:")
    code = (
        "import keyturn, sqlite3; s = keyturn.open(); "
        "t = sqlite3.connect('app.db').execute('SELECT totp_seed FROM users WHERE id=1')"
        ".fetchone()[0]; print('  Store.decrypt ->', s.decrypt(t, context='users.totp_seed'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=WORK, env=ENV, check=True)
    rotated = False
    for extra in (("rotate", "--yes"), ("rotate-kek", "--yes", "--new-kek-file", "new.kek")):
        help_text = subprocess.run(
            [sys.executable, "-m", "keyturn", "--help"],
            cwd=WORK,
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if f"  {extra[0]} " in help_text:
            if extra[0] == "rotate-kek":
                run("gen-kek", "--file", "new.kek")
            run(*extra)
            rotated = True
    if rotated:
        run("status")
        jobs = subprocess.run(
            [sys.executable, "-m", "keyturn", "jobs", "--json"],
            cwd=WORK,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        job = json.loads(jobs)[-1]["id"]
        print(
            "\nThe rotation kept a backup, so v1 is still 'draining'; app processes may also"
            "\nseal under it for the [apps] grace (2 s here). Once neither holds:"
        )
        time.sleep(2)
        run("prune", job, "--yes")
        run("keys")
    print(f"\nDone. Explore with: cd {WORK} && ../../.venv/bin/keyturn status --json")


if __name__ == "__main__":
    main()
