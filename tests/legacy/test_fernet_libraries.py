"""Databases the Python Fernet field libraries wrote, taken over: their keys are
derived from an app secret, as each library derives them (the libraries' own
code writes the values here, in the test extras)."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import App

import keyturn

RECIPES = Path(__file__).parents[2] / "docs" / "ADOPTING.md"


def recipe(library: str) -> str:
    """ADOPTING.md's [[legacy]] options for ``library``, as a reader would copy them
    (its name and key source are the test's own)."""
    text = RECIPES.read_text(encoding="utf-8")
    (block,) = [b for b in text.split("```toml\n")[1:] if b.startswith(f"# {library}:")]
    lines = block.split("```")[0].splitlines()[1:]
    return "\n".join(
        line for line in lines if not line.startswith(("[[legacy]]", "name", "format", "key_env"))
    )


SECRET = "django-insecure-Xy7!not-a-fernet-key-at-all-just-an-app-secret"
PLAINTEXTS = {1: "sk_live_one", 2: "Pässwörd ✓", 3: "x"}


def take_over(
    app: App,
    legacy: str,
    stored: dict[int, str],
    fmt: str = "fernet",
    plaintexts: dict[int, str] = PLAINTEXTS,
) -> None:
    """accounts(id, api_key) holding ``stored``, taken over through ``[[legacy]]``:
    a wrong secret and a dry run write nothing, the import opens every value."""
    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, api_key TEXT)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?)", list(stored.items()))
    conn.close()
    app.write_config(
        app.config.read_text()
        + f'\n[[legacy]]\nname = "lib"\nformat = "{fmt}"\nkey_env = "APP_SECRET"\n{legacy}\n'
        '[[columns]]\ntable = "accounts"\ncolumn = "api_key"\nlegacy = "lib"\n'
    )
    app.env["APP_SECRET"] = SECRET
    app.cli("init", check=True)
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    (column,) = [c for c in status["columns"] if c["column"] == "accounts.api_key"]
    assert column["legacy"] == len(stored) and column["plaintext"] == 0
    before = app.sql("SELECT id, api_key FROM accounts ORDER BY id")
    wrong = app.cli("import-legacy", "--yes", env={**app.env, "APP_SECRET": SECRET + "-rotated"})
    assert wrong.returncode == 3, wrong.stderr
    assert SECRET not in wrong.stderr + wrong.stdout
    app.cli("import-legacy", "--dry-run", check=True)
    assert app.sql("SELECT id, api_key FROM accounts ORDER BY id") == before
    done = json.loads(app.cli("import-legacy", "--yes", "--json", check=True).stdout)
    assert done["imported"] == len(stored) and done["failed"] == 0
    with keyturn.open(app.config) as store:
        for i, token in app.sql("SELECT id, api_key FROM accounts"):
            assert store.decrypt(token, context="accounts.api_key") == plaintexts[i]


def test_sqlalchemy_utils_fernet_engine(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """StringEncryptedType(..., FernetEngine): the key is SHA-256 of the app's key text."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import FernetEngine

    engine = create_engine(f"sqlite:///{app.dir / 'lib.db'}")
    table = Table(
        "accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("api_key", StringEncryptedType(String, SECRET, FernetEngine)),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "api_key": p} for i, p in PLAINTEXTS.items()])
        assert dict(conn.execute(select(table)).all()) == PLAINTEXTS  # the library reads them
    with sqlite3.connect(app.dir / "lib.db") as raw:
        stored = dict(raw.execute("SELECT id, api_key FROM accounts").fetchall())
    raw.close()
    engine.dispose()
    take_over(app, recipe("sqlalchemy-utils FernetEngine"), stored)


DJANGO_FIELDS = """
import json, sys
from django.conf import settings
settings.configure(SECRET_KEY=sys.argv[1], SALT_KEY=json.loads(sys.argv[2]), INSTALLED_APPS=[])
import django
django.setup()
from encrypted_fields.fields import EncryptedCharField
field = EncryptedCharField(max_length=200)
values = json.loads(sys.argv[3])
print(json.dumps({i: field.f.encrypt(p.encode()).decode() for i, p in values.items()}))
"""


def django_fernet_encrypted_fields(salts: list[str], plaintexts: dict[int, str]) -> dict[int, str]:
    """Values as django-fernet-encrypted-fields seals them under ``settings.SALT_KEY``."""
    out = subprocess.run(
        [sys.executable, "-c", DJANGO_FIELDS, SECRET, json.dumps(salts), json.dumps(plaintexts)],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    return {int(i): v for i, v in json.loads(out.stdout).items()}


def test_django_fernet_encrypted_fields_with_rotated_salts(app: App) -> None:
    """PBKDF2-HMAC-SHA256 of SECRET_KEY, 100,000 iterations, one key per SALT_KEY: values
    sealed under an older salt open too."""
    stored = django_fernet_encrypted_fields(["salt-now", "salt-before"], {1: PLAINTEXTS[1]})
    stored |= django_fernet_encrypted_fields(["salt-before"], {2: PLAINTEXTS[2], 3: PLAINTEXTS[3]})
    take_over(
        app,
        'kdf = "pbkdf2"\nsalt = "salt-now"\nsalts = ["salt-before"]\niterations = 100000',
        stored,
    )


def test_django_fernet_fields_hkdf(app: App) -> None:
    """django-fernet-fields: HKDF-SHA256 of SECRET_KEY with its fixed salt and info.
    The package does not import under Django 5, so its key derivation module is
    loaded on its own, and values sealed as its fields seal them."""
    from cryptography.fernet import Fernet

    spec = importlib.util.find_spec("fernet_fields")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "hkdf.py"
    loaded = importlib.util.spec_from_file_location("fernet_fields_hkdf", path)
    assert loaded is not None and loaded.loader is not None
    hkdf: Any = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(hkdf)
    fernet = Fernet(hkdf.derive_fernet_key(SECRET))
    stored = {i: fernet.encrypt(p.encode()).decode() for i, p in PLAINTEXTS.items()}
    legacy = recipe("django-fernet-fields")
    assert f'salt = "{hkdf.salt.decode()}"' in legacy and f'info = "{hkdf.info.decode()}"' in legacy
    take_over(app, legacy, stored)


@pytest.mark.parametrize("padding", ["naive", "pkcs5"])
def test_sqlalchemy_utils_aes_engine_cbc(app: App, padding: str) -> None:
    """StringEncryptedType(..., AesEngine): AES-CBC with no tag, the IV the key's first
    16 bytes. Every value is counted as legacy (none as plaintext), a wrong key is
    refused by the sample check, and every value opens after the import."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesEngine

    engine = create_engine(f"sqlite:///{app.dir / 'lib.db'}")
    table = Table(
        "accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("api_key", StringEncryptedType(String, SECRET, AesEngine, padding)),
    )
    table.metadata.create_all(engine)
    values = {i: f"sk_live_{i}_{'é' * (i % 5)}" for i in range(1, 301)}
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "api_key": p} for i, p in values.items()])
    with sqlite3.connect(app.dir / "lib.db") as raw:
        stored = dict(raw.execute("SELECT id, api_key FROM accounts").fetchall())
    raw.close()
    engine.dispose()
    legacy = recipe("sqlalchemy-utils AesEngine").replace(
        'padding = "naive"', f'padding = "{padding}"'
    )
    take_over(app, legacy.replace('"pkcs5"', '"pkcs7"'), stored, "aes-cbc", values)
