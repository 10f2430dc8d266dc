"""Values shaped like another scheme's ciphertext that no reader opens are
``unknown``: counted and listed apart from plaintext, never sealed unless the
operator says they are plaintext (issue 21), on every backend."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, app_at
from legacy_encoders import floh, passphrase, raw_key, trek

import keyturn

OLD = "OLD_KEY"


def unknown_app(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[App, dict[int, str]]:
    """A column holding plaintext, TREK's legacy values (its reader configured),
    and two foreign ciphertexts no reader describes, besides a random hex key."""
    old = passphrase()
    rows = {
        1: "smtp-password-1",
        2: trek(old, b"legacy secret"),
        3: floh(raw_key(), b"someone else's scheme"),  # hex iv:tag:ct, no reader
        4: base64.b64encode(os.urandom(48)).decode(),  # a blob of unknown layout
        5: secrets.token_hex(32),  # a random key as hex: plaintext, shaped like ciphertext
        6: "sk_live_51HplaintextAbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    }
    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, secret TEXT)")
    for i, value in rows.items():
        database.execute("INSERT INTO creds VALUES (:i, :v)", i=i, v=value)
    config = (
        f'database = "{database.url}"\n\n[[legacy]]\nname = "trek"\nkey_env = "{OLD}"\n'
        'format = "aes-gcm"\nprefix = "enc:v1:"\nkdf = "sha256"\nsuffix = ":api_keys:v1"\n\n'
        '[[columns]]\ntable = "creds"\ncolumn = "secret"\nlegacy = "trek"\n'
    )
    return app_at(tmp_path, monkeypatch, config, **{OLD: old}), rows


def report(app: App, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(app.cli(*args, "--json", check=True).stdout)
    return data


def test_unknown_values_are_reported_by_key_and_never_sealed_unasked(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, rows = unknown_app(database, tmp_path, monkeypatch)
    app.cli("init", check=True)
    (column,) = report(app, "status")["columns"]
    assert (column["plaintext"], column["legacy"], column["unknown"]) == (2, 1, 3)
    human = app.cli("status", check=True).stdout
    assert "unknown 3" in human and "--include-unknown" in human

    verified = report(app, "verify")
    assert (verified["plaintext"], verified["legacy_ok"], verified["unknown"]) == (2, 1, 3)
    assert sorted(r["pk"] for r in verified["unknown_rows"]) == [3, 4, 5]

    for args in (("import-legacy", "--yes", "--include-plaintext"), ("encrypt-existing",)):
        done = app.cli(*args)
        assert done.returncode == 0, done.stderr
        assert "unknown: creds.secret at primary key 3" in done.stdout
        assert "--include-unknown" in done.stderr
    stored = dict(database.rows("SELECT id, secret FROM creds"))
    assert {i: stored[i] for i in (3, 4, 5)} == {i: rows[i] for i in (3, 4, 5)}
    assert all(stored[i].startswith("kt1:1:") for i in (1, 2, 6))

    dry = report(app, "encrypt-existing", "--include-unknown", "--dry-run")
    assert dry["encrypted"] == 3 and dry["unknown_rows"] == []
    assert dict(database.rows("SELECT id, secret FROM creds")) == stored
    sealed = report(app, "encrypt-existing", "--include-unknown")
    assert sealed["encrypted"] == 3 and sealed["include_unknown"] is True
    with keyturn.open() as store:
        opened = {
            i: store.decrypt(v, context="creds.secret")
            for i, v in database.rows("SELECT id, secret FROM creds")
        }
    assert opened == {**rows, 2: "legacy secret"}
    (column,) = report(app, "status")["columns"]
    assert (column["plaintext"], column["unknown"], column["by_version"]) == (0, 0, {"1": 6})
