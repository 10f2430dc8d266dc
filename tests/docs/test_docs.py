"""Every Python snippet in the README and docs/ runs as written, against a real app."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import App, key_file

import keyturn

ROOT = Path(__file__).parents[2]


def snippets(doc: str, lang: str) -> list[str]:
    """The fenced ``lang`` blocks of a document, dedented (the README's are in a list)."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(rf"^( *)```{lang}\n(.*?)^\1```", text, re.DOTALL | re.MULTILINE)
    return ["\n".join(line[len(indent) :] for line in b.splitlines()) for indent, b in blocks]


def run(code: str, namespace: dict[str, Any]) -> None:
    exec(code, namespace)  # noqa: S102  (the docs' own snippets, run as a reader would)


def test_every_python_snippet_is_covered_here() -> None:
    found = {
        doc: len(snippets(doc, "python"))
        for doc in ["README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
    }
    assert {d: n for d, n in found.items() if n} == {
        "README.md": 1,
        "docs/ADOPTING.md": 4,  # its django-cryptography reader: tests/legacy/test_binary_columns
        "docs/ADMIN.md": 1,
        "docs/ARCHITECTURE.md": 2,
        "docs/INTEGRATIONS.md": 1,
    }


def test_readme_tour_read_and_write(app: App) -> None:
    app.cli("init", check=True)
    (code,) = snippets("README.md", "python")
    namespace: dict[str, Any] = {}
    run(code, namespace)
    assert namespace["secret"] == "sk_live_…"
    namespace["store"].close()


def test_adopting_switch_the_app_before_migrating(app: App) -> None:
    """The snippet with the column in plaintext-reading mode, as the doc's TOML shows."""
    (toml,) = [s for s in snippets("docs/ADOPTING.md", "toml") if "read_plaintext" in s]
    app.sql("CREATE TABLE usersx (id INTEGER PRIMARY KEY, api_key TEXT)")
    app.write_config(app.config.read_text() + "\n" + toml.replace('"users"', '"usersx"', 1))
    app.cli("init", check=True)
    (code,) = [s for s in snippets("docs/ADOPTING.md", "python") if "needs_rewrap" in s]
    code = code.replace("users.api_key", "usersx.api_key")
    row = SimpleNamespace(api_key="sk_live_plaintext_1")
    namespace: dict[str, Any] = {"keyturn": keyturn, "row": row}
    run(code, namespace)
    store = namespace["store"]
    assert namespace["secret"] == "sk_live_plaintext_1"
    assert row.api_key.startswith("kt1:1:") and store.rewrap_needed["usersx.api_key"] == 1
    assert store.decrypt(row.api_key, context="usersx.api_key") == "sk_live_plaintext_1"
    assert store.decrypt(None, context="x") is None and store.decrypt("", context="x") == ""
    assert store.encrypt(None, context="x") is None
    # Without the mode, plaintext is refused: the default.
    with pytest.raises(keyturn.InvalidToken):
        store.decrypt("sk_live_plaintext_1", context="users.secret")
    with pytest.raises(keyturn.InvalidToken):  # a damaged token is never read as plaintext
        store.decrypt("kt1:1:AAAA", context="usersx.api_key")
    store.close()


def test_adopting_a_settings_table(app: App) -> None:
    """The settings-table entry as the doc shows it: only the listed rows are sealed,
    and the snippet reads one back with its row's context."""
    (toml,) = [s for s in snippets("docs/ADOPTING.md", "toml") if "where" in s]
    app.sql("CREATE TABLE app_settings (key TEXT PRIMARY KEY, value TEXT)")
    settings = {"smtp_pass": "päss-1", "smtp_host": "mail.example.org", "smtp_port": "587"}
    for key, value in settings.items():
        app.sql("INSERT INTO app_settings VALUES (?, ?)", (key, value))
    app.write_config(app.config.read_text() + "\n" + toml)
    app.cli("init", check=True)
    report = json.loads(app.cli("encrypt-existing", "--json", check=True).stdout)
    assert report["columns"]["app_settings.value"]["encrypted"] == 1
    rows = dict(app.sql("SELECT key, value FROM app_settings"))
    assert rows["smtp_host"] == "mail.example.org" and rows["smtp_port"] == "587"
    (code,) = [s for s in snippets("docs/ADOPTING.md", "python") if "row_context" in s]
    store = keyturn.open(app.config)
    namespace: dict[str, Any] = {"keyturn": keyturn, "store": store, "value": rows["smtp_pass"]}
    run(code, namespace)
    assert namespace["smtp_pass"] == "päss-1"
    store.close()


def test_adopting_fields_inside_json_documents(app: App) -> None:
    """The JSON-documents entry and snippet as the doc shows them: the app seals a
    document, keyturn verifies and rotates its fields, the app opens and masks it."""
    (toml,) = [s for s in snippets("docs/ADOPTING.md", "toml") if "json_fields" in s]
    app.sql("CREATE TABLE connector_definition (id INTEGER PRIMARY KEY, connector_config TEXT)")
    app.write_config(app.config.read_text() + "\n" + toml)
    app.cli("init", check=True)
    (code,) = [s for s in snippets("docs/ADOPTING.md", "python") if "JsonFields" in s]
    store = keyturn.open(app.config)
    namespace: dict[str, Any] = {"keyturn": keyturn, "store": store, "json": json}
    run(code, namespace)
    store.close()
    stored = namespace["stored"]
    assert '"name": "github"' in stored and '"retries": 3' in stored and "sk_live_1" not in stored
    assert namespace["config"]["apiKey"] == "sk_live_1"
    assert namespace["shown"] == {"name": "github", "apiKey": "********", "retries": 3}
    app.sql("INSERT INTO connector_definition VALUES (1, ?)", (stored,))
    assert json.loads(app.cli("verify", "--json", check=True).stdout)["ok"] == 1
    rotated = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)
    assert rotated["columns"]["connector_definition.connector_config$.apiKey"]["rotated"] == 1


def test_architecture_kek_provider_walkthrough(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docker-secret provider, registered as the doc shows, opens a keyring."""
    from keyturn import kek as providers
    from keyturn.config import load_config
    from keyturn.ops.init import init

    code = snippets("docs/ARCHITECTURE.md", "python")[0]
    namespace: dict[str, Any] = {}
    monkeypatch.setattr(providers, "_PROVIDERS", dict(providers._PROVIDERS))
    run(code, namespace)
    namespace["SECRETS_DIR"] = key_file(tmp_path / "kek").parent
    monkeypatch.delenv("KEYTURN_KEK")
    app.write_config('kek = "docker-secret:kek"\n' + app.config.read_text())
    result = init(load_config(app.config))
    # The provider found the key in the mounted file: that is where it comes from.
    assert result.created and result.kek_source == f"file:{tmp_path / 'kek'}"
    with keyturn.open(app.config) as store:
        token = store.encrypt("sk_live_x", context="users.secret")
        assert store.decrypt(token, context="users.secret") == "sk_live_x"


def test_architecture_legacy_format_walkthrough(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ChaCha20-Poly1305 format, registered as the doc shows, is taken over by
    import-legacy like a built-in one."""
    import base64
    import os

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from keyturn import legacy

    code = snippets("docs/ARCHITECTURE.md", "python")[1]
    monkeypatch.setattr(legacy, "_FORMATS", dict(legacy._FORMATS))
    run(code, {})
    key = os.urandom(32)
    app.env["OLD_CHACHA_KEY"] = key.hex()
    aead = ChaCha20Poly1305(key)
    values = {}
    app.sql("CREATE TABLE hooks (id INTEGER PRIMARY KEY, secret TEXT)")
    for i in range(1, 6):
        nonce = os.urandom(12)
        sealed = base64.b64encode(nonce + aead.encrypt(nonce, f"whsec_{i}".encode(), None))
        values[i] = f"whsec_{i}"
        app.sql("INSERT INTO hooks VALUES (?, ?)", (i, sealed.decode()))
    app.write_config(
        app.config.read_text()
        + '\n[[columns]]\ntable = "hooks"\ncolumn = "secret"\nprimary_key = "id"\n'
        'legacy = "old"\n\n[[legacy]]\nname = "old"\nformat = "chacha20-poly1305"\n'
        'key_env = "OLD_CHACHA_KEY"\n'
    )
    app.cli("init", check=True)
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    hooks = next(c for c in status["columns"] if c["column"] == "hooks.secret")
    assert hooks["legacy"] == 5
    app.cli("import-legacy", "--yes", check=True)
    assert app.cli("verify").returncode == 0
    with keyturn.open(app.config) as store:
        for i, token in app.sql("SELECT id, secret FROM hooks"):
            assert store.decrypt(token, context="hooks.secret") == values[i]


def test_integrations_sqlalchemy_snippet(app: App) -> None:
    """The model, as the doc defines it, on a table keyturn.toml lists."""
    from keyturn.integrations.sqlalchemy import configure

    app.sql(
        "CREATE TABLE api_credentials (id INTEGER PRIMARY KEY, service VARCHAR(32), "
        "api_key VARCHAR(255))"
    )
    app.write_config(
        app.config.read_text() + '\n[[columns]]\ntable = "api_credentials"\ncolumn = "api_key"\n'
    )
    app.cli("init", check=True)
    (code,) = snippets("docs/INTEGRATIONS.md", "python")
    # A module of its own, as the reader's models.py: SQLAlchemy resolves the
    # annotations in the module that defines the class.
    module = ModuleType("integrations_snippet")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    try:
        run(code, namespace)
    finally:
        configure(None)
        del sys.modules[module.__name__]
    store = namespace["store"]
    assert namespace["api_key"] == "sk_live_example"
    ((stored,),) = app.sql("SELECT api_key FROM api_credentials")
    assert stored.startswith("kt1:1:")
    assert store.decrypt(stored, context="api_credentials.api_key") == "sk_live_example"
    namespace["engine"].dispose()
    store.close()


def test_admin_mount_snippet(app: App) -> None:
    from starlette.applications import Starlette

    app.cli("init", check=True)
    (code,) = snippets("docs/ADMIN.md", "python")
    host = Starlette()
    run(code.replace("/etc/myapp/keyturn.toml", str(app.config)), {"app": host})
    status, body = asyncio.run(_get(host, "/keyturn/healthz"))
    assert (status, json.loads(body)) == (200, {"status": "ok", "database": True})


async def _get(asgi: Any, path: str) -> tuple[int, bytes]:
    """One GET through an ASGI app, without a server."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("t", 80),
    }  # fmt: skip
    await asgi(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body
