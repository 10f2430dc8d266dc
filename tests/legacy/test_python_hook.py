"""``format = "python"``: an app's own envelope, read by the app's own function."""

from __future__ import annotations

import base64
import json
import os
import sqlite3

from conftest import App
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import keyturn

HOOKS = '''
import base64, json
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

def read(value, keys):
    """The app's envelope: appenv: + base64(JSON {"n": nonce, "c": ciphertext}), key in hex."""
    doc = json.loads(base64.b64decode(value[len("appenv:"):]))
    for key in keys:
        try:
            return AESGCM(bytes.fromhex(key)).decrypt(
                base64.b64decode(doc["n"]), base64.b64decode(doc["c"]), None
            )
        except Exception:
            continue
    raise ValueError("cannot open " + value + " with " + keys[0])  # never shown by keyturn
'''


def envelope(key: bytes, plaintext: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    doc = {"n": base64.b64encode(nonce).decode(), "c": base64.b64encode(sealed).decode()}
    return "appenv:" + base64.b64encode(json.dumps(doc).encode()).decode()


def test_an_apps_own_envelope_is_taken_over_through_its_reader(app: App) -> None:
    key = os.urandom(32)
    values = {i: f"sk_live_{i}_Päss" for i in range(1, 41)}
    (app.dir / "apphooks.py").write_text(HOOKS)
    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT)")
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)",
            [(i, envelope(key, p)) for i, p in values.items()] + [(99, "plain-secret")],
        )
    conn.close()
    app.write_config(
        app.config.read_text()
        + '\n[[legacy]]\nname = "envelope"\nformat = "python"\nreader = "apphooks:read"\n'
        'prefix = "appenv:"\nkey_env = "APP_KEY"\n'
        '[[columns]]\ntable = "accounts"\ncolumn = "api_key"\nlegacy = "envelope"\n'
    )
    app.env["APP_KEY"] = key.hex()
    app.cli("init", check=True)
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    (column,) = [c for c in status["columns"] if c["column"] == "accounts.api_key"]
    assert (column["legacy"], column["plaintext"]) == (40, 1)
    before = app.sql("SELECT * FROM accounts ORDER BY id")
    wrong_key = os.urandom(32).hex()
    wrong = app.cli("import-legacy", "--yes", env={**app.env, "APP_KEY": wrong_key})
    assert wrong.returncode == 3 and "of the first 40 values" in wrong.stderr, wrong.stderr
    assert wrong_key not in wrong.stderr + wrong.stdout and "appenv:" not in wrong.stderr
    dry = json.loads(app.cli("import-legacy", "--dry-run", "--json", check=True).stdout)
    assert dry["imported"] == 40 and app.sql("SELECT * FROM accounts ORDER BY id") == before
    done = json.loads(app.cli("import-legacy", "--yes", "--json", check=True).stdout)
    assert (done["imported"], done["plaintext"]) == (40, 1)
    with keyturn.open(app.config) as store:
        for i, token in app.sql("SELECT id, api_key FROM accounts WHERE id < 99"):
            assert store.decrypt(token, context="accounts.api_key") == values[i]
    assert json.loads(app.cli("verify", "--json", check=True).stdout)["failed"] == 0


def test_a_reader_that_cannot_be_imported_is_a_config_error(app: App) -> None:
    app.write_config(
        app.config.read_text()
        + '\n[[legacy]]\nname = "x"\nformat = "python"\nreader = "no_such_module:read"\n'
        'prefix = "x:"\nkey_env = "K"\n'
    )
    proc = app.cli("status")
    assert proc.returncode == 2 and "cannot import no_such_module" in proc.stderr
    app.write_config(
        app.config.read_text().replace(
            'reader = "no_such_module:read"\nprefix = "x:"\n', 'reader = "os:sep"\n'
        )
    )
    proc = app.cli("status")
    assert proc.returncode == 2 and "needs `prefix` or `recognise`" in proc.stderr
