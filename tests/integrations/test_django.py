"""Django model fields and `manage.py keyturn`, in a real project (tests/django_project)
run as real processes on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import Database, base_env, free_port
from parallel_app import kill_mid_job_and_resume, replay_journal, wait_for

import keyturn

PROJECT = Path(__file__).parents[1] / "django_project"
ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}


class Project:
    """The Django project on one test database; ``manage()`` runs manage.py."""

    def __init__(self, database: Database, tmp_path: Path) -> None:
        self.database = database
        self.dir = tmp_path
        url = urlsplit(database.url)
        self.env = {
            **base_env(),
            "KEYTURN_KEK": os.urandom(32).hex(),
            "DJ_BASE": str(tmp_path),
            "DJ_ENGINE": ENGINES[database.kind],
            "DJ_NAME": url.path.lstrip("/") if database.kind != "sqlite" else url.path[1:],
            "DJ_USER": url.username or "",
            "DJ_PASSWORD": url.password or "",
            "DJ_HOST": url.hostname or "",
            "DJ_PORT": str(url.port or ""),
            "PYTHONPATH": os.pathsep.join([str(PROJECT), *sys.path]),
        }
        if database.kind == "sqlite":
            self.env["DJ_NAME"] = str(tmp_path / "app.db")

    def manage(
        self, *args: str, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, str(PROJECT / "manage.py"), *args],
            cwd=self.dir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, f"manage.py {args}: {proc.stderr}"
        return proc

    def shell(self, code: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.manage("shell", "-v", "0", "-c", code, check=check)

    def store(self) -> Any:
        """A Store on the same database, configured as keyturn.toml would."""
        config = self.dir / "keyturn.toml"
        config.write_text(
            f'database = "{self.database.url}"\n[[columns]]\ntable = "vault_credential"\n'
            'column = "api_key"\n[[columns]]\ntable = "vault_credential"\ncolumn = "notes"\n'
        )
        os.environ["KEYTURN_KEK"] = self.env["KEYTURN_KEK"]
        return keyturn.open(config)


# What the fields and commands do alone, not a backend: on SQLite.
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def project(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    made = Project(database, tmp_path)
    monkeypatch.setenv("KEYTURN_KEK", made.env["KEYTURN_KEK"])
    made.manage("migrate", "--run-syncdb", "-v", "0")
    made.manage("keyturn", "init")
    return made


def test_fields_read_and_write_through_the_orm_and_the_store(project: Project) -> None:
    project.shell(
        "from vault.models import Credential\n"
        "Credential.objects.create(id=1, name='a', api_key='sk_live_1', notes='pässwörd')\n"
        "Credential.objects.create(id=2, name='b', api_key=None, notes='')\n"
    )
    rows = dict((r[0], r[1:]) for r in project.database.rows(
        "SELECT id, api_key, notes FROM vault_credential"
    ))  # fmt: skip
    assert rows[1][0].startswith("kt1:1:") and rows[2] == (None, "")
    with project.store() as store:
        assert store.decrypt(rows[1][0], context="vault_credential.api_key") == "sk_live_1"
        assert store.decrypt(rows[1][1], context="vault_credential.notes") == "pässwörd"
    out = project.shell(
        "from vault.models import Credential\n"
        "c = Credential.objects.get(id=1)\n"
        "print(c.api_key, c.notes)\n"
        "c.name = 'renamed'; c.save()\n"
        "empty = Credential.objects.filter(api_key__isnull=True)\n"
        "print(list(empty.values_list('id', flat=True)))\n"
    ).stdout.splitlines()
    assert out == ["sk_live_1 pässwörd", "[2]"]
    # Saved with another field changed, the secret keeps its token.
    after = project.database.rows("SELECT api_key, notes FROM vault_credential WHERE id = 1")
    assert after == [rows[1]]


@sqlite_only
def test_lookups_are_refused_and_reads_are_strict(project: Project) -> None:
    project.shell(
        "from vault.models import Credential\n"
        "Credential.objects.create(id=1, name='a', api_key='sk_1')\n"
    )
    refused = project.shell(
        "from vault.models import Credential\nCredential.objects.filter(api_key='sk_1').count()\n",
        check=False,
    )
    assert refused.returncode != 0 and "vault_credential.api_key is encrypted" in refused.stderr
    project.database.execute("UPDATE vault_credential SET api_key = 'sk_plaintext'")
    strict = project.shell(
        "from vault.models import Credential\nCredential.objects.get(id=1).api_key\n", check=False
    )
    assert strict.returncode != 0 and "InvalidToken" in strict.stderr
    assert "sk_plaintext" not in strict.stderr


@sqlite_only
def test_manage_py_keyturn_and_system_checks(project: Project) -> None:
    project.manage("check")
    project.shell("from vault.models import Credential\nCredential.objects.create(name='a')\n")
    status = json.loads(project.manage("keyturn", "status", "--json").stdout)
    assert {c["column"] for c in status["columns"]} == {
        "vault_credential.api_key",
        "vault_credential.notes",
        "vault_connector.config$.apiKey",
        "vault_connector.config$.headers[*].value",
    }
    assert project.manage("keyturn", "--help").stdout.count("rotate") >= 1
    busy = project.manage("keyturn", "destroy-key", "1", "--yes", check=False)
    assert busy.returncode == 3  # the CLI's exit codes, unchanged
    bad = project.manage("check", check=False, DJ_BAD="1")
    assert bad.returncode != 0 and "keyturn.E002" in bad.stderr
    production = project.manage("check", check=False, KEYTURN_ENV="production")
    assert production.returncode != 0 and "keyturn.E001" in production.stderr
    row_bound = project.manage("check", check=False, DJ_ROW_BIND="1")
    assert row_bound.returncode != 0 and "row binding is not built yet" in row_bound.stderr


def test_django_app_through_a_killed_and_resumed_parallel_rotation(project: Project) -> None:
    """The app process reads, writes, inserts and deletes through the ORM while
    `manage.py keyturn rotate --workers 2` runs, is SIGKILLed and resumed: no error in
    the app, and afterwards every row holds what it last wrote, all on the new version."""
    project.shell(
        "from vault.models import Credential\n"
        "Credential.objects.bulk_create("
        "[Credential(name='a', api_key=f'sk_{i}_initial', notes='n') for i in range(1500)])\n"
    )
    with project.store() as store:
        expected: dict[int, str | None] = {
            i: store.decrypt(key, context="vault_credential.api_key")
            for i, key in project.database.rows("SELECT id, api_key FROM vault_credential")
        }
    assert len(expected) == 1500
    journal, stopfile = project.dir / "journal.jsonl", project.dir / "stop"
    app = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "appload", str(journal), str(stopfile), "5"],
        cwd=project.dir,
        env=project.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        rotation = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "keyturn", "rotate", "--yes",
             "--workers", "2", "--max-rate", "1500", "--rows-per-chunk", "300"],
            cwd=project.dir, env=project.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        kill_mid_job_and_resume(
            rotation,
            project.database,
            lambda: project.manage("keyturn", "rotate", "--yes", "--json"),
        )
    finally:
        stopfile.touch()
        _, err = app.communicate(timeout=60)
    replay_journal(journal, expected, app, err)
    with project.store() as store:
        rows = project.database.rows("SELECT id, api_key, notes FROM vault_credential")
        assert {i for i, _, _ in rows} == set(expected)
        for i, api_key, notes in rows:
            assert api_key.startswith("kt1:2:"), i
            assert notes == "" or notes.startswith("kt1:2:"), i
            assert store.decrypt(api_key, context="vault_credential.api_key") == expected[i]


@sqlite_only
def test_taking_over_a_plaintext_field_with_the_app_live(project: Project) -> None:
    """The documented path: the field class changes (no schema change), the app reads
    plaintext in the migration mode meanwhile, `manage.py keyturn encrypt-existing`
    seals the rest, and then the mode is turned off."""
    project.database.execute(
        "INSERT INTO vault_credential (id, name, api_key, notes) VALUES "
        "(1, 'a', 'sk_plain_1', ''), (2, 'b', 'sk_plain_2', '')"
    )
    refused = project.shell(
        "from vault.models import Credential\nCredential.objects.get(id=1).api_key\n",
        check=False,
    )
    assert refused.returncode != 0 and "InvalidToken" in refused.stderr
    migrating = {"DJ_READ_PLAINTEXT": "1"}
    read = project.manage(
        "shell", "-v", "0", "-c",
        "from vault.models import Credential\n"
        "c = Credential.objects.get(id=1); print(c.api_key)\n"
        "c.api_key = 'sk_new_1'; c.save()\n",
        **migrating,
    )  # fmt: skip
    assert read.stdout.strip() == "sk_plain_1"
    rows = dict(project.database.rows("SELECT id, api_key FROM vault_credential"))
    assert rows[1].startswith("kt1:1:") and rows[2] == "sk_plain_2"
    project.manage("keyturn", "encrypt-existing", **migrating)
    rows = dict(project.database.rows("SELECT id, api_key FROM vault_credential"))
    assert all(v.startswith("kt1:1:") for v in rows.values())
    out = project.shell(
        "from vault.models import Credential\n"
        "print(sorted(c.api_key for c in Credential.objects.all()))\n"
    )
    assert out.stdout.strip() == "['sk_new_1', 'sk_plain_2']"


def admin_project(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The project with the admin installed, migrated and initialized."""
    made = Project(database, tmp_path)
    made.env["DJ_ADMIN"] = "1"
    monkeypatch.setenv("KEYTURN_KEK", made.env["KEYTURN_KEK"])
    made.manage("migrate", "--run-syncdb", "-v", "0")
    made.manage("keyturn", "init")
    return made


ADMIN_SESSION = """
from django.contrib.auth.models import User
from django.test import Client
from vault.models import Credential
User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
Credential.objects.create(id=1, name="a", api_key="sk_live_shown_nowhere")
client = Client()
assert client.login(username="root", password="pw-for-tests-only")
page = client.get("/admin/vault/credential/1/change/").content.decode()
print("secret in page:", "sk_live_shown_nowhere" in page)
print("masked input:", 'type="password"' in page and 'name="api_key"' in page)
form = {"name": "renamed", "api_key": "", "notes": ""}
reply = client.post("/admin/vault/credential/1/change/", form)
print("saved:", reply.status_code)
print("kept:", Credential.objects.get(id=1).api_key)
client.post("/admin/vault/credential/1/change/", {**form, "api_key": "sk_live_new"})
print("changed:", Credential.objects.get(id=1).api_key)
"""


@sqlite_only
def test_the_admin_masks_secrets_and_keeps_them_unless_changed(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = admin_project(database, tmp_path, monkeypatch)
    out = made.shell(ADMIN_SESSION).stdout.splitlines()
    assert out == [
        "secret in page: False",
        "masked input: True",
        "saved: 302",
        "kept: sk_live_shown_nowhere",
        "changed: sk_live_new",
    ], out


JSON_SESSION = """
import json
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from vault.models import Connector
config = {"url": "https://api.example", "apiKey": "sk_live_json_1", "headers": [{"value": "hv-1"}]}
Connector.objects.create(id=1, name="github", config=config)
with connection.cursor() as cursor:
    cursor.execute("SELECT config FROM vault_connector")
    stored = cursor.fetchone()[0]
sealed = "sk_live_json_1" not in stored and "hv-1" not in stored
print("sealed:", sealed and "api.example" in stored)
print("read:", Connector.objects.get(id=1).config == config)
found = Connector.objects.filter(config__url="https://api.example")
print("lookup:", list(found.values_list("id", flat=True)))
User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
client = Client()
assert client.login(username="root", password="pw-for-tests-only")
page = client.get("/admin/vault/connector/1/change/").content.decode()
leaked = "sk_live_json_1" in page or "hv-1" in page
print("secret in page:", leaked, "masked:", "********" in page)
shown = {"url": "https://api.example/v2", "apiKey": "********", "headers": [{"value": "********"}]}
form = {"name": "github", "config": json.dumps(shown)}
reply = client.post("/admin/vault/connector/1/change/", form)
print("saved:", reply.status_code)
print("kept:", Connector.objects.get(id=1).config == {**config, "url": "https://api.example/v2"})
"""


@sqlite_only
def test_a_json_field_seals_its_secrets_and_the_admin_masks_them(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = admin_project(database, tmp_path, monkeypatch)
    out = made.shell(JSON_SESSION).stdout.splitlines()
    assert out == [
        "sealed: True",
        "read: True",
        "lookup: [1]",
        "secret in page: False masked: True",
        "saved: 302",
        "kept: True",
    ], out
    rotated = json.loads(made.manage("keyturn", "rotate", "--yes", "--json").stdout)
    assert rotated["columns"]["vault_connector.config$.apiKey"]["rotated"] == 1
    assert rotated["columns"]["vault_connector.config$.headers[*].value"]["rotated"] == 1
    again = made.shell(
        "from vault.models import Connector\nprint(Connector.objects.get(id=1).config['apiKey'])\n"
    )
    assert again.stdout.strip() == "sk_live_json_1"


@sqlite_only
def test_the_admin_masks_secrets_in_a_real_browser(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`manage.py runserver` and headless Chromium: the change form never shows the
    secret, saving it blank keeps it, typing a new one replaces it."""
    from browser import chrome
    from selenium.webdriver.common.by import By

    made = admin_project(database, tmp_path, monkeypatch)
    made.shell(
        "from django.contrib.auth.models import User\n"
        "from vault.models import Credential\n"
        "User.objects.create_superuser('root', 'root@example.com', 'pw-for-tests-only')\n"
        "Credential.objects.create(id=1, name='a', api_key='sk_live_in_a_browser')\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "runserver", f"127.0.0.1:{port}",
         "--noreload"],
        cwd=made.dir, env=made.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    driver = chrome()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/admin/login/"))
        driver.get(base + "/admin/login/?next=/admin/vault/credential/1/change/")
        driver.find_element(By.NAME, "username").send_keys("root")
        driver.find_element(By.NAME, "password").send_keys("pw-for-tests-only")
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        field = driver.find_element(By.NAME, "api_key")
        assert field.get_attribute("type") == "password"
        assert field.get_attribute("value") == ""
        assert "sk_live_in_a_browser" not in driver.page_source
        name = driver.find_element(By.NAME, "name")
        name.clear()
        name.send_keys("renamed")
        _submit(driver, "_continue")
        assert "renamed" in driver.find_element(By.NAME, "name").get_attribute("value")
        kept = made.shell(
            "from vault.models import Credential\nprint(Credential.objects.get(id=1).api_key)\n"
        )
        assert kept.stdout.strip() == "sk_live_in_a_browser"
        driver.find_element(By.NAME, "api_key").send_keys("sk_live_typed_in")
        _submit(driver, "_continue")
        assert "sk_live_typed_in" not in driver.page_source
        changed = made.shell(
            "from vault.models import Credential\nprint(Credential.objects.get(id=1).api_key)\n"
        )
        assert changed.stdout.strip() == "sk_live_typed_in"
    finally:
        driver.quit()
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert "sk_live_in_a_browser" not in err and "sk_live_typed_in" not in err


def _submit(driver: Any, button: str) -> None:
    """Click a form's button and wait until the next page has replaced this one (else
    an element found at once may be the old page's, gone a moment later)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.NAME, button).click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(page))


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@sqlite_only
def test_manage_py_keyturn_serve_answers_from_the_settings(project: Project) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "keyturn", "serve", "--port", str(port)],
        cwd=project.dir, env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"))
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            assert json.loads(reply.read()) == {"status": "ok", "database": True}
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert project.env["KEYTURN_KEK"] not in err
