"""BLOB and bytea columns taken over in place (issue 21): values written by
sqlalchemy-utils' EncryptedType, django-cryptography and django-fernet-fields
themselves, plaintext bytes and bytes of unknown shape, on SQLite, PostgreSQL
and MariaDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, app_at, assert_no_secret

import keyturn

RECIPES = Path(__file__).parents[2] / "docs" / "ADOPTING.md"
APP_SECRET = "app-key-text-given-to-EncryptedType"
DJANGO_SECRET = "django-insecure-" + "x7!" * 12
API_KEYS = {1: "sk_live_one", 2: "Pässwörd ✓", 3: "x"}
PROFILES = {1: "profile-secret-1", 2: "ünïcode ✓", 3: ""}
TOKENS = {1: "xoxb-token-1", 2: "tökén ✓"}
NOTES: dict[int, bytes | None] = {
    1: "plain note ✓".encode(),
    2: b"\xff\x00\x01",  # a short binary secret: plaintext
    3: os.urandom(48),  # bytes no reader opens: unknown
    4: None,
    5: b"",
}


NAMES = ("api_key", "profile", "note", "token")


def block(opening: str, fence: str) -> str:
    """ADOPTING.md's code block starting with ``opening``."""
    text = RECIPES.read_text(encoding="utf-8")
    (found,) = [b for b in text.split(f"```{fence}\n")[1:] if b.startswith(opening)]
    return found.split("```")[0]


@pytest.fixture(scope="module")
def django3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with Django 3.2, django-cryptography and django-fernet-fields (neither
    imports under Django 4 or 5), keyturn's own environment after them: what such an
    app runs."""
    where = tmp_path_factory.mktemp("django3")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    libraries = ["django>=3.2,<3.3", "django-cryptography==1.1", "django-fernet-fields==0.6"]
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", *libraries], capture_output=True, text=True
    )
    if pip.returncode != 0:
        reason = f"cannot install django-cryptography: {pip.stderr.strip()[-300:]}"
        if os.environ.get("KEYTURN_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "zz-keyturn.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours)
    )
    return python


DJANGO_FIELDS = """
import json, sys
from django.conf import settings
settings.configure(
    SECRET_KEY=sys.argv[1], INSTALLED_APPS=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
import django
django.setup()
from django.db import connection, models
from django_cryptography.fields import encrypt
from fernet_fields import EncryptedTextField
fields = {"cryptography": encrypt(models.CharField(max_length=200)), "fernet": EncryptedTextField()}
field = fields[sys.argv[2]]
saved = {i: field.get_db_prep_save(v, connection) for i, v in json.loads(sys.argv[3]).items()}
print(json.dumps({i: bytes(v).hex() for i, v in saved.items()}))
"""


def django_field(python: Path, library: str, values: dict[int, str]) -> dict[int, bytes]:
    """Values as a Django library's encrypted field saves them (its own code)."""
    out = subprocess.run(
        [python, "-c", DJANGO_FIELDS, DJANGO_SECRET, library, json.dumps(values)],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    return {int(i): bytes.fromhex(v) for i, v in json.loads(out.stdout).items()}


def binary_app(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: Path
) -> App:
    """accounts(id, api_key, profile, note), every value column binary, filled by
    the libraries; keyturn.toml and the reader module from ADOPTING.md's recipes."""
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine
    from sqlalchemy_utils import EncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import FernetEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EncryptedType is deprecated in favour of the String one
        api_key_type = EncryptedType(String, APP_SECRET, FernetEngine)
    table = Table(
        "accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("api_key", api_key_type),
        Column("profile", LargeBinary),
        Column("note", LargeBinary),
        Column("token", LargeBinary),
    )
    engine = create_engine(database.url)
    table.metadata.create_all(engine)
    profiles = django_field(python, "cryptography", PROFILES)
    tokens = django_field(python, "fernet", TOKENS)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "id": i,
                    "api_key": API_KEYS.get(i),
                    "profile": profiles.get(i),
                    "note": NOTES[i],
                    "token": tokens.get(i),
                }
                for i in NOTES
            ],
        )
    engine.dispose()
    (tmp_path / "keyturn_readers.py").write_text(
        block("# keyturn_readers.py", "python"), encoding="utf-8"
    )
    fernet = block("# sqlalchemy-utils FernetEngine", "toml").replace(
        'name = "sqlalchemy-utils"', 'name = "sqlalchemy-utils"\n'
    )
    hkdf = block("# django-fernet-fields", "toml").replace("APP_SECRET", "DJANGO_SECRET_KEY")
    config = (
        f'database = "{database.url}"\n\n'
        + fernet
        + "\n"
        + hkdf
        + "\n"
        + block("# django-cryptography", "toml")
        + '\n[[columns]]\ntable = "accounts"\ncolumn = "api_key"\nlegacy = "sqlalchemy-utils"\n'
        '\n[[columns]]\ntable = "accounts"\ncolumn = "profile"\nlegacy = "django-cryptography"\n'
        '\n[[columns]]\ntable = "accounts"\ncolumn = "note"\n'
        '\n[[columns]]\ntable = "accounts"\ncolumn = "token"\nlegacy = "django-fernet-fields"\n'
    )
    return app_at(
        tmp_path, monkeypatch, config, APP_SECRET=APP_SECRET, DJANGO_SECRET_KEY=DJANGO_SECRET
    )


def stored(database: Database) -> list[tuple[Any, ...]]:
    """Every row as the database holds it, values as bytes."""
    return sorted(
        (i, *(None if v is None else bytes(v) for v in values))
        for i, *values in database.rows("SELECT id, api_key, profile, note, token FROM accounts")
    )


def cli(app: App, python: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``keyturn ARGS`` run by the Python that has django-cryptography."""
    return subprocess.run(
        [python, "-m", "keyturn", *args],
        cwd=app.dir, env={**app.env, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def report(app: App, python: Path, *args: str) -> dict[str, Any]:
    proc = cli(app, python, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    planted = [v for v in (*API_KEYS.values(), *PROFILES.values(), *TOKENS.values()) if len(v) > 3]
    assert_no_secret(proc.stdout + proc.stderr, APP_SECRET, DJANGO_SECRET, *planted)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_binary_columns_are_taken_over_in_place(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, django3: Path
) -> None:
    app = binary_app(database, tmp_path, monkeypatch, django3)
    assert cli(app, django3, "init").returncode == 0
    columns = {c["column"]: c for c in report(app, django3, "status")["columns"]}
    kinds = {
        name: (c["legacy"], c["plaintext"], c["unknown"], c["empty"]) for name, c in columns.items()
    }
    assert kinds == {
        "accounts.api_key": (3, 0, 0, 2),
        "accounts.profile": (3, 0, 0, 2),
        "accounts.note": (0, 2, 1, 2),
        "accounts.token": (2, 0, 0, 3),
    }
    # verify agrees with status on every value.
    verified = report(app, django3, "verify")["columns"]
    assert verified["accounts.api_key"]["legacy_ok"] == 3
    assert verified["accounts.profile"]["legacy_ok"] == 3
    assert verified["accounts.token"]["legacy_ok"] == 2
    note = verified["accounts.note"]
    assert (note["plaintext"], note["unknown"], note["empty"], note["failed"]) == (2, 1, 2, 0)

    before = stored(database)
    wrong = cli(app, django3, "import-legacy", "--yes", APP_SECRET="not-the-key")
    assert wrong.returncode == 3, wrong.stderr
    wrong = cli(app, django3, "import-legacy", "--yes", DJANGO_SECRET_KEY="wrong")
    assert wrong.returncode == 3, wrong.stderr  # both Django libraries' columns refuse it
    for args in (("import-legacy", "--dry-run"), ("encrypt-existing", "--dry-run")):
        assert cli(app, django3, *args).returncode == 0
    assert stored(database) == before

    imported = report(app, django3, "import-legacy", "--yes")
    assert imported["imported"] == 8 and imported["failed"] == 0
    sealed = report(app, django3, "encrypt-existing")
    assert sealed["encrypted"] == 2 and sealed["unknown_rows"] == [
        {"table": "accounts", "column": "note", "pk": 3}
    ]
    expected = {
        "api_key": {i: v.encode() for i, v in API_KEYS.items()},
        "profile": {i: v.encode() for i, v in PROFILES.items()},
        "note": {i: v for i, v in NOTES.items() if i in (1, 2)},
        "token": {i: v.encode() for i, v in TOKENS.items()},
    }

    def opened(version: int) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {name: {} for name in NAMES}
        with keyturn.open() as store:
            for i, *values in stored(database):
                for name, value in zip(NAMES, values, strict=True):
                    if value is None or value == b"" or (name, i) == ("note", 3):
                        continue
                    assert isinstance(value, bytes) and value.startswith(f"kt1:{version}:".encode())
                    out[name][i] = store.decrypt_bytes(value, context=f"accounts.{name}")
        return out

    assert opened(1) == expected
    assert stored(database)[2][3] == NOTES[3]  # the unknown value, exactly as it was

    rotated = report(app, django3, "rotate", "--yes")
    assert rotated["rotated"] == 10 and rotated["failed"] == 0
    assert opened(2) == expected
    columns = {c["column"]: c for c in report(app, django3, "status")["columns"]}
    assert {n: c["by_version"] for n, c in columns.items()} == {
        "accounts.api_key": {"2": 3},
        "accounts.profile": {"2": 3},
        "accounts.note": {"2": 2},
        "accounts.token": {"2": 2},
    }
    restored = report(app, django3, "restore", rotated["job"], "--yes")
    assert restored["restored"] == 10
    assert opened(1) == expected
