"""The admin HTTP API and page: in this process through ASGI where only the app's
answers are under test, and as a real `keyturn serve` process on loopback where the
process is (start-up, its log, the browser, proxies, a CLI rotating at the same time)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import chrome
from conftest import (
    APPS,
    PLAINTEXTS,
    App,
    Database,
    after_grace,
    app_at,
    assert_no_secret,
    fill_users,
    free_port,
)

import keyturn


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    text: str

    @classmethod
    def of(cls, status: int, headers: dict[str, str], raw: bytes) -> Reply:
        """A response as received: header names in lower case, the body parsed if JSON."""
        text = raw.decode()
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return cls(status, {k.lower(): v for k, v in headers.items()}, body, text)


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[str]
    output: str = ""  # stdout and stderr, once it has stopped

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        request = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, hdrs, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
        return Reply.of(status, hdrs, raw)

    def wait_job(self, job_id: str, token: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/v1/admin/encryption/jobs/{job_id}", token).body
            if job["state"] in ("succeeded", "failed"):
                return dict(job)
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")


def serve(app: App, *options: str) -> Iterator[Server]:
    port = free_port()
    proc = app.start("serve", "--port", str(port), *options)
    server = Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            if server.call("GET", "/healthz").status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"keyturn serve did not start: {err}")
        time.sleep(0.1)
    try:
        yield server
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        server.output = out + err
        assert_no_secret(out + err, app.env["KEYTURN_KEK"])


def token(app: App, name: str, scope: str = "read") -> str:
    proc = app.cli("token", "create", "--name", name, "--scope", scope, check=True)
    value = proc.stdout.strip()
    assert value.startswith("kta_") and "\n" not in value
    assert value not in proc.stderr
    return value


@dataclass
class LocalServer:
    """The admin app called in this process, without a socket; its log is kept."""

    app: Any
    log: io.StringIO

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return Reply.of(*asyncio.run(_asgi_call(self.app, method, path, sent)))


async def _asgi_call(
    app: Any, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app, from 127.0.0.1, as uvicorn would pass it on."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    route, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": route, "raw_path": route.encode(), "root_path": "",
        "query_string": query.encode(), "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    hdrs = {name.decode(): value.decode() for name, value in start.get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], hdrs, body


@pytest.fixture
def server(app: App) -> Iterator[LocalServer]:
    """The admin app of an initialized app database, in this process; at the end its
    request log is checked for the KEK."""
    from keyturn.server import create_app

    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    # Every logger's records, as the process's stderr would have them; the
    # request log at INFO, as `keyturn serve` sets it.
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger().addHandler(handler)
    server_log = logging.getLogger("keyturn.server")
    level = server_log.level
    server_log.setLevel(logging.INFO)
    asgi = create_app(app.config)
    try:
        yield LocalServer(asgi, log)
    finally:
        logging.getLogger().removeHandler(handler)
        server_log.setLevel(level)
        assert log.getvalue(), "the request log was not captured, so not checked"
        asgi.state.keyturn.store.close()
        assert_no_secret(log.getvalue(), app.env["KEYTURN_KEK"])


def test_auth_matrix(app: App, server: LocalServer) -> None:
    reader, rotator, admin = (
        token(app, "reader"),
        token(app, "ci", "rotate"),
        token(app, "root", "admin"),
    )
    revoked = token(app, "gone", "admin")
    app.cli("token", "revoke", "gone", check=True)
    status = "/v1/admin/encryption"
    for presented in (None, "", "kta_" + secrets.token_urlsafe(32), revoked, reader + "x"):
        reply = server.call("GET", status, presented)
        assert reply.status == 401, presented
        assert reply.body == {"error": reply.body["error"]} and "token" in reply.body["error"]
        assert reply.headers["www-authenticate"] == "Bearer"
    wrong_scheme = server.call("GET", status, headers={"Authorization": f"Basic {reader}"})
    assert wrong_scheme.status == 401
    for good in (reader, rotator, admin):
        assert server.call("GET", status, good).status == 200
    # Wrong scope: 403, and nothing started.
    assert server.call("POST", "/v1/admin/encryption/rotate", reader).status == 403
    assert server.call("POST", "/v1/admin/encryption/rotate-kek", rotator).status == 403
    assert server.call("GET", "/v1/admin/audit", reader).status == 200
    assert server.call("GET", "/healthz").body == {"status": "ok", "database": True}
    # The status endpoint serves what `keyturn status --json` prints.
    cli_status = json.loads(app.cli("status", "--json", check=True).stdout)
    api_status = server.call("GET", status, reader).body
    for report in (cli_status, api_status):
        for key in report["keys"]:
            key.pop("age_days")
        report.pop("active_age_days")
    assert api_status == cli_status
    tokens = app.sql("SELECT name, token_hash FROM keyturn_api_tokens")
    assert all(reader not in h and len(h) == 64 for _, h in tokens)


def test_repeated_failures_get_429_with_retry_after(app: App, server: LocalServer) -> None:
    good = token(app, "reader")
    for _ in range(5):
        assert server.call("GET", "/v1/admin/encryption", "kta_wrong").status == 401
    blocked = server.call("GET", "/v1/admin/encryption", good)
    assert blocked.status == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert "error" in blocked.body
    assert server.call("GET", "/healthz").status == 200  # no auth, not limited


def test_rotate_job_lifecycle_409_and_audit(app: App) -> None:
    fill_users(app, 20_000)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    for server in serve(app):
        ops = token(app, "ops", "rotate")
        started = server.call("POST", "/v1/admin/encryption/rotate", ops)
        assert started.status == 202
        job_id = started.body["id"]
        assert started.headers["location"] == f"/v1/admin/encryption/jobs/{job_id}"
        second = server.call("POST", "/v1/admin/encryption/rotate", ops)
        assert second.status == 409 and "running" in second.body["error"]
        job = server.wait_job(job_id, ops)
        assert job["state"] == "succeeded", job
        report = job["report"]
        assert report["new_version"] == 2 and report["failed"] == 0
        assert report["rotated"] == sum(
            1 for _ in app.sql("SELECT id FROM users WHERE secret LIKE 'kt1:%'")
        )
        assert job["progress"]["done"] == job["progress"]["total"] == 20_000
        assert app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:2:%'")[0][0] > 19_000
        # The rotation is in the audit log under the token's name, and verifies.
        entries = server.call("GET", "/v1/admin/audit?after=0&limit=2", ops).body
        assert len(entries["entries"]) == 2 and entries["next_after"] == 2
        rest = server.call("GET", "/v1/admin/audit?after=2", ops).body["entries"]
        mine = [e for e in rest if e["actor"] == "token:ops"]
        assert [e["details"]["outcome"] for e in mine] == ["started", "succeeded"]
        assert mine[1]["details"]["new_version"] == 2
        assert app.cli("audit", "verify").returncode == 0
        assert server.call("GET", "/v1/admin/encryption/jobs/nope", ops).status == 404
        huge = server.call("GET", "/v1/admin/audit?after=99999999999999999999999", ops)
        assert huge.status == 200 and huge.body["entries"] == []
        # A rotation running from the CLI also blocks one over HTTP.
        cli = app.start("rotate", "--yes", "--max-rate", "2000", output=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not app.sql("SELECT 1 FROM keyturn_jobs WHERE state = 'running'"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            blocked = server.call("POST", "/v1/admin/encryption/rotate", ops)
            assert blocked.status == 409 and "rotation job" in blocked.body["error"]
        finally:
            cli.terminate()
            cli.wait()
        # The job the CLI started is visible through the API by its id.
        db_job = app.sql("SELECT id FROM keyturn_jobs WHERE state = 'running'")[0][0]
        seen = server.call("GET", f"/v1/admin/encryption/jobs/{db_job}", ops).body
        assert seen["id"] == db_job and seen["state"] == "running"


def test_rotate_kek_only_from_the_configured_source(app: App, tmp_path: Path) -> None:
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    root = token(app, "root", "admin")
    for server in serve(app):  # not configured: refused
        reply = server.call("POST", "/v1/admin/encryption/rotate-kek", root)
        assert reply.status == 403 and "[server]" in reply.body["error"]
    new_kek = secrets.token_hex(32)
    app.write_config(app.config.read_text() + '\n[server]\nnew_kek_env = "NEW_KEK"\n')
    app.env["NEW_KEK"] = new_kek
    for server in serve(app):
        reply = server.call("POST", "/v1/admin/encryption/rotate-kek", root)
        assert reply.status == 200, reply.text
        assert reply.body["rewrapped_versions"] == 1
        assert new_kek not in reply.text
        again = server.call("POST", "/v1/admin/encryption/rotate-kek", root)
        assert again.status == 409 and "same as the current" in again.body["error"]
        assert server.call("GET", "/v1/admin/encryption", root).status == 200
    assert app.cli("status").returncode == 3  # the old KEK no longer opens the keyring
    app.env["KEYTURN_KEK"] = new_kek
    assert app.cli("audit", "verify").returncode == 0
    entries = json.loads(app.cli("audit", "list", "--json", check=True).stdout)
    kek_entries = [
        (e["actor"], e["details"]["outcome"]) for e in entries if e["action"] == "rotate-kek"
    ]
    # The refused second call (same KEK) wrote nothing, audit log included.
    assert kek_entries == [("token:root", "started"), ("token:root", "succeeded")]


def test_openapi_schema_lists_every_endpoint(server: LocalServer) -> None:
    schema = server.call("GET", "/openapi.json").body
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/healthz",
        "/v1/admin/encryption",
        "/v1/admin/encryption/rotate",
        "/v1/admin/encryption/jobs/{job_id}",
        "/v1/admin/encryption/jobs/{job_id}/prune",
        "/v1/admin/encryption/jobs/{job_id}/restore",
        "/v1/admin/encryption/keys/{version}/destroy",
        "/v1/admin/encryption/rotate-kek",
        "/v1/admin/audit",
        "/metrics",
    }


def test_page_csrf_and_cookie_rules(app: App, server: LocalServer) -> None:
    ops = token(app, "ops", "rotate")
    page = server.call("GET", "/admin/encryption")
    assert page.status == 200 and "Sign in" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    cookie = f"keyturn_session={ops}; keyturn_csrf=abc123"
    # Signed in by cookie, but a POST without the CSRF header is refused.
    refused = server.call("POST", "/admin/api/rotate", headers={"Cookie": cookie})
    assert refused.status == 403 and "CSRF" in refused.body["error"]
    wrong = server.call(
        "POST", "/admin/api/rotate", headers={"Cookie": cookie, "X-CSRF-Token": "abc124"}
    )
    assert wrong.status == 403
    assert app.sql("SELECT count(*) FROM keyturn_keys") == [(1,)]
    # The bearer API does not accept the cookie.
    assert server.call("GET", "/v1/admin/encryption", headers={"Cookie": cookie}).status == 401
    dashboard = server.call("GET", "/admin/encryption", headers={"Cookie": cookie})
    assert "Rotate data key" in dashboard.text
    assert_no_secret(dashboard.text, app.env["KEYTURN_KEK"], ops)
    wrapped = app.sql("SELECT wrapped_dek FROM keyturn_keys")[0][0]
    assert wrapped not in dashboard.text


def test_admin_page_in_headless_chromium(app: App, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    fill_users(app, 5_000)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    ops = token(app, "ops", "rotate")
    for server in serve(app):
        driver = chrome()
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(server.base + "/admin/encryption")
            driver.find_element(By.ID, "token").send_keys("kta_not-a-token")
            driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".error")))
            assert "not valid" in driver.find_element(By.CSS_SELECTOR, ".error").text
            driver.find_element(By.ID, "token").send_keys(ops)
            driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
            wait.until(ec.presence_of_element_located((By.ID, "card-active")))
            assert "v1" in driver.find_element(By.ID, "card-active").text
            assert "v1: " in driver.find_element(By.ID, "card-versions").text
            session = next(c for c in driver.get_cookies() if c["name"] == "keyturn_session")
            assert session["httpOnly"] is True and session["sameSite"] == "Strict"
            assert driver.execute_script("return document.cookie") == ""  # nothing readable
            history = driver.find_element(By.ID, "history").text
            assert "active" in history and "How this works" in driver.page_source
            driver.find_element(By.ID, "rotate").click()
            wait.until(ec.alert_is_present())
            alert = driver.switch_to.alert
            assert "v2" in alert.text
            alert.accept()
            wait.until(ec.presence_of_element_located((By.ID, "finished")))
            finished = driver.find_element(By.ID, "finished").text
            assert "succeeded" in finished and "key v2 is active" in finished, finished
            assert "v2" in driver.find_element(By.ID, "card-active").text
            driver.save_screenshot(str(tmp_path / "admin-page.png"))
            assert (tmp_path / "admin-page.png").stat().st_size > 10_000
            if os.environ.get("ADMIN_PAGE_SCREENSHOT"):
                shutil.copy(tmp_path / "admin-page.png", os.environ["ADMIN_PAGE_SCREENSHOT"])
            page = driver.page_source
            assert_no_secret(page, app.env["KEYTURN_KEK"], ops, *PLAINTEXTS)
        finally:
            driver.quit()
    assert app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:2:%'")[0][0] > 4_900


def test_token_commands_and_a_server_that_cannot_open_the_keyring(app: App) -> None:
    app.cli("init", check=True)
    value = token(app, "ops", "rotate")
    taken = app.cli("token", "create", "--name", "ops")
    assert taken.returncode == 2 and "exists" in taken.stderr and taken.stdout == ""
    bad_name = app.cli("token", "create", "--name", "no spaces")
    assert bad_name.returncode == 2
    listed = app.cli("token", "list", check=True).stdout
    assert "ops" in listed and "rotate" in listed and "live" in listed
    assert value not in listed and value not in app.cli("token", "list", "--json").stdout
    assert app.cli("token", "revoke", "nobody").returncode == 2
    app.cli("token", "revoke", "ops", check=True)
    assert "revoked" in app.cli("token", "list", check=True).stdout
    assert token(app, "ops", "read") != value  # a revoked name can be reused
    # Fail closed: with the wrong KEK the server does not start.
    env = {**app.env, "KEYTURN_KEK": secrets.token_hex(32)}
    proc = app.cli("serve", "--port", str(free_port()), env=env, timeout=30)
    assert proc.returncode == 3 and "does not open" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_held_keyring_lock_gets_409_naming_its_holder(app: App) -> None:
    """CLI+HTTP at once: the lock, not a check beside the mint, decides."""
    from sqlalchemy import create_engine

    from keyturn.db.locking import KeyringLock

    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.write_config(app.config.read_text() + '\n[server]\nnew_kek_env = "NEW_KEK"\n')
    app.env["NEW_KEK"] = secrets.token_hex(32)
    root = token(app, "root", "admin")
    for server in serve(app):
        engine = create_engine(f"sqlite:///{app.db}")
        lock = KeyringLock(engine, "destroy-key").acquire()
        try:
            for path in ("/v1/admin/encryption/rotate", "/v1/admin/encryption/rotate-kek"):
                reply = server.call("POST", path, root)
                assert reply.status == 409, reply.text
                assert "locked by destroy-key by " in reply.body["error"]
                holder = reply.body["holder"]
                assert holder["operation"] == "destroy-key" and holder["owner"].endswith(
                    f":{os.getpid()}"
                )
        finally:
            lock.release()
            engine.dispose()
        started = server.call("POST", "/v1/admin/encryption/rotate", root)
        assert started.status == 202
        assert server.wait_job(started.body["id"], root)["state"] == "succeeded"
    assert app.sql("SELECT version FROM keyturn_keys ORDER BY version") == [(1,), (2,)]


def revoked_and_forged(app: App) -> tuple[str, str]:
    """A revoked admin token 'gone', and a chosen token 'evil' whose record an attacker
    with SQL access alone inserted (scope admin, the SHA-256 of the token)."""
    import hashlib

    revoked = token(app, "gone", "admin")
    app.cli("token", "revoke", "gone", check=True)
    chosen = "kta_" + "A" * 43
    app.sql(
        "INSERT INTO keyturn_api_tokens (name, scope, token_hash, created_at, created_by) "
        "VALUES ('evil', 'admin', ?, '2026-01-01 00:00:00', 'cli:x')",
        (hashlib.sha256(chosen.encode()).hexdigest(),),
    )
    return revoked, chosen


def test_a_token_record_forged_or_edited_by_sql_is_refused_and_audited(app: App) -> None:
    """With write access to the database only, inserting a row with the SHA-256 of a
    chosen token (scope admin), or raising a token's scope, or un-revoking one,
    gives nothing."""
    app.cli("init", check=True)
    reader = token(app, "reader", "read")
    revoked, chosen = revoked_and_forged(app)
    for server in serve(app):
        assert server.call("GET", "/v1/admin/encryption", reader).status == 200
        assert server.call("POST", "/v1/admin/encryption/rotate", reader).status == 403
        app.sql("UPDATE keyturn_api_tokens SET scope = 'admin' WHERE name = 'reader'")
        app.sql("UPDATE keyturn_api_tokens SET revoked_at = NULL WHERE name = 'gone'")
        for forged in (chosen, reader, revoked):
            reply = server.call("POST", "/v1/admin/encryption/rotate", forged)
            assert reply.status == 401, reply.text
        assert server.call("GET", "/v1/admin/encryption", chosen).status == 401
    assert app.sql("SELECT version FROM keyturn_keys") == [(1,)]
    refused = [
        e["details"]["name"]
        for e in json.loads(app.cli("audit", "list", "--json", check=True).stdout)
        if e["action"] == "token.refused"
    ]
    assert set(refused) == {"evil", "reader", "gone"}
    listed = app.cli("token", "list")
    assert "REFUSED" in listed.stdout and "not made with the KEK" in listed.stderr
    assert app.cli("audit", "verify").returncode == 0


def test_requests_are_logged_and_unknown_routes_answer_json(app: App) -> None:
    app.cli("init", check=True)
    ops = token(app, "ops", "rotate")
    for server in serve(app):
        assert server.call("GET", "/v1/admin/encryption", ops).status == 200
        assert server.call("GET", "/v1/admin/encryption?secret=x", "kta_wrong").status == 401
        missing = server.call("GET", "/v1/nope", ops)
        assert missing.status == 404 and "no such endpoint" in missing.body["error"]
        wrong_method = server.call("DELETE", "/v1/admin/encryption", ops)
        assert wrong_method.status == 405 and wrong_method.body["error"] == "method not allowed"
    lines = server.output.splitlines()
    assert any("GET /v1/admin/encryption 200 " in x and x.endswith("token=ops") for x in lines)
    assert any("GET /v1/admin/encryption 401 " in x for x in lines)
    assert any("GET /v1/nope 404 " in x for x in lines)
    assert ops not in server.output and "kta_wrong" not in server.output
    assert "secret=x" not in server.output, "the query string is not logged"


def test_forwarded_headers_are_believed_only_from_trusted_proxies(app: App) -> None:
    """uvicorn believed X-Forwarded-For from 127.0.0.1: 200 guesses with a rotating
    header got no 429, and any chosen address could be locked out."""
    app.cli("init", check=True)
    good = token(app, "reader")
    for server in serve(app):
        for i in range(5):
            spoof = {"X-Forwarded-For": f"203.0.113.{i}"}
            assert server.call("GET", "/v1/admin/encryption", "kta_x", spoof).status == 401
        blocked = server.call("GET", "/v1/admin/encryption", good, {"X-Forwarded-For": "1.2.3.4"})
        assert blocked.status == 429, "the header changed nothing: the peer is the client"


def test_the_failure_limiter_is_bounded_and_has_a_global_backstop() -> None:
    from types import SimpleNamespace

    from keyturn.server.app import _client, _FailureLimiter

    limiter = _FailureLimiter(limit=5, window=60, max_clients=100)
    for i in range(1000):
        limiter.fail(f"198.51.100.{i % 250}:{i}")
    assert len(limiter) == 100, "the table is bounded"
    assert limiter.backstop() > 0, "1000 failures from anywhere: a backstop"
    assert limiter.retry_after("203.0.113.9") == 0, "which never locks out a valid token"
    fresh = _FailureLimiter(limit=5, window=60)
    for _ in range(4):
        fresh.fail("a")
    assert fresh.retry_after("a") == 0 and fresh.retry_after("b") == 0
    fresh.fail("a")
    assert fresh.retry_after("a") > 0 and fresh.retry_after("b") == 0

    from ipaddress import ip_network

    trusted = (ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"))

    def request(peer: str, forwarded: str) -> Any:
        return SimpleNamespace(
            client=SimpleNamespace(host=peer), headers={"x-forwarded-for": forwarded}
        )

    assert _client(request("127.0.0.1", "198.51.100.7, 10.1.2.3"), trusted) == "198.51.100.7"
    assert _client(request("127.0.0.1", "1.1.1.1, 198.51.100.7"), trusted) == "198.51.100.7"
    assert _client(request("192.0.2.5", "198.51.100.7"), trusted) == "192.0.2.5"
    assert _client(request("127.0.0.1", "198.51.100.7"), ()) == "127.0.0.1"


def test_a_refused_token_is_throttled_by_its_name_from_any_address(app: App) -> None:
    """Behind a trusted proxy, each guess may come from another address: a token that
    matches a revoked or forged record is throttled by that record's name too, and a
    forged one is audited only until then."""
    app.cli("init", check=True)
    app.write_config(app.config.read_text() + '\n[server]\ntrusted_proxies = ["127.0.0.1"]\n')
    revoked, chosen = revoked_and_forged(app)
    reader = token(app, "reader")
    for server in serve(app):
        for presented in (revoked, chosen):
            codes = [
                server.call(
                    "GET", "/v1/admin/encryption", presented, {"X-Forwarded-For": f"198.51.100.{i}"}
                ).status
                for i in range(8)
            ]
            assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
        assert server.call("GET", "/v1/admin/encryption", reader).status == 200
    refused = [
        e
        for e in json.loads(app.cli("audit", "list", "--json", check=True).stdout)
        if e["action"] == "token.refused"
    ]
    assert len(refused) == 5 and {e["details"]["name"] for e in refused} == {"evil"}


def test_metrics_for_prometheus_behind_a_read_token(app: App, server: LocalServer) -> None:
    """GET /metrics: the counts `status` reports, in Prometheus' format, for a read
    token only; refused authentications counted; no secret, token or key in it."""
    from prometheus_client.parser import text_string_to_metric_families

    reader = token(app, "prometheus")
    assert server.call("GET", "/metrics").status == 401
    assert server.call("GET", "/metrics", "kta_" + secrets.token_urlsafe(32)).status == 401
    reply = server.call("GET", "/metrics", reader)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    for column in status["columns"]:
        for version, n in column["by_version"].items():
            key = ("keyturn_values", (("column", column["column"]), ("version", version)))
            assert samples[key] == n
        for kind in ("plaintext", "legacy", "unknown", "empty"):
            sample = (f"keyturn_{kind}_values", (("column", column["column"]),))
            assert samples[sample] == column[kind]
    assert samples[("keyturn_active_version", ())] == status["active_version"]
    assert samples[("keyturn_cryptoperiod_days", ())] == status["cryptoperiod_days"]
    assert samples[("keyturn_key_state", (("state", "active"), ("version", "1")))] == 1
    assert samples[("keyturn_refused_authentications", ())] >= 1
    assert_no_secret(reply.text, app.env["KEYTURN_KEK"], reader)


def _scrape(server: Server, reader: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    reply = server.call("GET", "/metrics", reader)
    assert reply.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_metrics_scraped_during_a_rotation_show_it_progress(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `keyturn serve` scraped while `keyturn rotate` runs in another process:
    the job shows as running with its counts and rate rising, and at the end every
    value is on the new version; no planted secret or token in any metric."""
    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, secret TEXT)")
    planted = {i: f"sk_live_planted_{i:05d}" for i in range(1, 3001)}
    from sqlalchemy import create_engine, text

    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO creds VALUES (:i, :s)"),
            [{"i": i, "s": s} for i, s in planted.items()],
        )
    engine.dispose()
    app = app_at(tmp_path, monkeypatch, _creds_config(database))
    kek = app.env["KEYTURN_KEK"]
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    reader = token(app, "prometheus")
    for server in serve(app):
        rotation = app.start("rotate", "--yes", "--max-rate", "1500", output=subprocess.DEVNULL)
        seen: list[float] = []
        rates: list[float] = []
        pages: list[str] = []
        while rotation.poll() is None:
            page = server.call(
                "GET", "/admin/encryption", headers={"Cookie": f"keyturn_session={reader}"}
            )
            pages.append(page.text)
            raw = server.call("GET", "/metrics", reader).text
            assert_no_secret(raw, kek, reader, *planted.values())
            samples = _scrape(server, reader)
            done = [
                n
                for (name, labels), n in samples.items()
                if name == "keyturn_job_values" and ("outcome", "rotated") in labels
            ]
            if samples.get(("keyturn_jobs", (("kind", "rotate"), ("state", "running")))):
                seen.append(sum(done))
                rates += [
                    n for (name, _), n in samples.items() if name == "keyturn_job_rows_per_second"
                ]
            time.sleep(0.2)
        assert rotation.returncode == 0
        assert len(seen) >= 2 and seen[-1] > seen[0], seen
        assert rates and max(rates) > 0, rates
        running = [p for p in pages if "data-running=" in p]  # the CLI's job, on the page
        assert running and "Rows/s" in running[-1] and "creds.secret" in running[-1]
        for page_text in pages:
            assert_no_secret(page_text, kek, reader, *planted.values())
        after = _scrape(server, reader)
        assert after[("keyturn_jobs", (("kind", "rotate"), ("state", "succeeded")))] == 1
        assert after[("keyturn_active_version", ())] == 2
        assert after[("keyturn_values", (("column", "creds.secret"), ("version", "2")))] == 3000
        assert after[("keyturn_audit_ok", ())] == 1
        assert after[("keyturn_audit_entries", ())] > 0


def test_request_logs_as_json_lines(app: App) -> None:
    """`keyturn serve --log-format json`: one JSON object per request and per refused
    sign-in, with structured fields and never a token."""
    app.cli("init", check=True)
    ops = token(app, "ops", "rotate")
    for server in serve(app, "--log-format", "json"):
        assert server.call("GET", "/v1/admin/encryption", ops).status == 200
        assert server.call("GET", "/v1/admin/encryption", "kta_wrong").status == 401
    records = [json.loads(x) for x in server.output.splitlines() if x.startswith("{")]
    requests_ = [r for r in records if r.get("event") == "request"]
    assert {(r["method"], r["path"], r["status"]) for r in requests_} >= {
        ("GET", "/v1/admin/encryption", 200),
        ("GET", "/v1/admin/encryption", 401),
    }
    ok = next(r for r in requests_ if r["status"] == 200 and r["path"] != "/healthz")
    assert ok["token_name"] == "ops" and ok["level"] == "info" and ok["at"].endswith("Z")
    assert isinstance(ok["duration_ms"], float)
    assert ops not in server.output and "kta_wrong" not in server.output


def _creds_config(database: Database) -> str:
    return f'database = "{database.url}"\n{APPS}\n[[columns]]\ntable = "creds"\ncolumn = "secret"\n'


def _signed_in(value: str) -> dict[str, str]:
    """The page's cookies for a token, and the CSRF header its script sends."""
    return {"Cookie": f"keyturn_session={value}; keyturn_csrf=c5rf", "X-CSRF-Token": "c5rf"}


def test_page_actions_restore_prune_and_destroy_on_every_backend(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs, backups and keys acted on from the page (an admin token, the CSRF
    header) and the API: each audited, refused with a reason where the rules say no,
    and the job ids are those of `keyturn jobs`."""
    from keyturn.server import create_app

    database.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, secret TEXT)")
    for i in range(1, 41):
        database.execute("INSERT INTO creds VALUES (:i, :s)", i=i, s=f"sk_live_{i}_{i * 7}")
    app = app_at(tmp_path, monkeypatch, _creds_config(database))
    kek = app.env["KEYTURN_KEK"]
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.cli("verify", check=True)
    root, viewer = token(app, "root", "admin"), token(app, "viewer", "read")
    first = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    local = LocalServer(create_app(app.config), io.StringIO())

    def on(version: int) -> int:
        return int(
            database.rows(f"SELECT count(*) FROM creds WHERE secret LIKE 'kt1:{version}:%'")[0][0]
        )

    try:
        page = local.call("GET", "/admin/encryption", headers=_signed_in(root)).text
        for shown in (first, "Drop backups", "Restore", "Audit log", "Failed at last verify"):
            assert shown in page
        assert "normal after a rotation" in page  # v1 draining: a state, not a warning
        assert "Needs attention" not in page
        viewer_page = local.call("GET", "/admin/encryption", headers=_signed_in(viewer))
        assert "data-action" not in viewer_page.text  # no action for a read token
        path = f"/admin/api/jobs/{first}/restore"
        assert local.call("POST", path, headers=_signed_in(viewer)).status == 403
        no_csrf = {"Cookie": f"keyturn_session={root}; keyturn_csrf=c5rf"}
        assert local.call("POST", path, headers=no_csrf).status == 403
        assert on(2) == 40

        from sqlalchemy import create_engine

        from keyturn.db.locking import KeyringLock

        engine = create_engine(database.url)
        lock = KeyringLock(engine, "rotate").acquire()  # another process's operation
        try:
            busy = local.call("POST", path, headers=_signed_in(root))
            assert busy.status == 409 and "locked by rotate" in busy.body["error"], busy.text
        finally:
            lock.release()
            engine.dispose()
        assert on(2) == 40
        restored = local.call("POST", path, headers=_signed_in(root))
        assert restored.status == 200 and restored.body["restored"] == 40, restored.text
        assert "restored 40 value(s)" in restored.body["message"]
        assert on(1) == 40
        missing = local.call("POST", "/v1/admin/encryption/jobs/feedfacecafe/prune", root)
        assert missing.status == 404

        started = local.call("POST", "/v1/admin/encryption/rotate", root)
        assert started.status == 202
        second = started.body["id"]
        deadline = time.monotonic() + 60
        while local.call("GET", f"/v1/admin/encryption/jobs/{second}", root).body["state"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        listed = json.loads(app.cli("jobs", "--json", check=True).stdout)
        assert {j["id"] for j in listed} == {first, second}  # one id for CLI and HTTP
        assert on(3) == 40

        after_grace()  # so that what refuses the destroy is the backups, not the grace
        early = local.call("POST", "/v1/admin/encryption/keys/1/destroy", root)
        assert early.status == 409 and "backed-up" in early.body["error"], early.text
        for job in (first, second):
            pruned = local.call("POST", f"/admin/api/jobs/{job}/prune", headers=_signed_in(root))
            assert pruned.status == 200 and "dropped" in pruned.body["message"], pruned.text
        after_grace()
        app.cli("status", check=True)  # retires what nothing uses, once the grace is over
        active = local.call("POST", "/v1/admin/encryption/keys/3/destroy", root)
        assert active.status == 409
        assert local.call("POST", "/v1/admin/encryption/keys/x9/destroy", root).status == 404
        page = local.call("GET", "/admin/encryption", headers=_signed_in(root)).text
        assert "data-action='destroy' data-target='1'" in page
        destroyed = local.call("POST", "/admin/api/keys/1/destroy", headers=_signed_in(root))
        assert destroyed.status == 200, destroyed.text
        states = dict(database.rows("SELECT version, state FROM keyturn_keys"))
        assert states[1] == "destroyed" and states[3] == "active"
        with keyturn.open(app.config) as store:
            actions = [(e.actor, e.action) for e in store.audit.latest(40)]
        for action in ("restore", "prune", "destroy-key"):
            assert ("token:root", action) in actions
        page = local.call("GET", "/admin/encryption", headers=_signed_in(root)).text
        assert_no_secret(page, kek, root, viewer, "sk_live_1_7")
    finally:
        local.app.state.keyturn.store.close()


SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"


def _page_checks(driver: Any) -> None:
    """Nothing wider than the screen but scrolling tables, a name on every control,
    and the first action reachable by keyboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
    unnamed = driver.execute_script(
        "return [...document.querySelectorAll('button, input:not([type=hidden]), textarea,"
        " progress')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute("
        "'aria-label') && !e.textContent.trim()).map(e => e.outerHTML)"
    )
    assert unnamed == []
    body = driver.find_element(By.TAG_NAME, "body")
    for _ in range(40):
        body = driver.switch_to.active_element
        if body.get_attribute("class") == "action":
            break
        body.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "action"


def test_admin_page_actions_in_chromium_at_desktop_and_phone_widths(
    app: App, tmp_path: Path
) -> None:
    """Every action of the page in a real browser: drop a job's backups, destroy the
    key that retires, rotate, restore; at a desktop's and a phone's width, with
    screenshots (ADMIN_SCREENSHOTS=1 keeps them in docs/screenshots)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    fill_users(app, 2_000)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    app.cli("verify", check=True)
    first = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)["job"]
    root = token(app, "root", "admin")
    shots: list[Path] = []

    def act(driver: Any, wait: Any, selector: str, expect: str) -> str:
        """Click an action, accept its confirmation, and return the notice after."""
        page = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.CSS_SELECTOR, selector).click()
        wait.until(ec.alert_is_present())
        question = driver.switch_to.alert.text
        driver.switch_to.alert.accept()
        wait.until(ec.staleness_of(page))  # the page reloads after a successful action
        wait.until(ec.visibility_of_element_located((By.ID, "notice")))
        notice = driver.find_element(By.ID, "notice").text
        assert expect in notice, notice
        return question

    for server in serve(app):
        driver = chrome()
        try:
            wait = WebDriverWait(driver, 30)
            driver.set_window_size(390, 844)  # a phone
            driver.get(server.base + "/admin/encryption")
            driver.find_element(By.ID, "token").send_keys(root)
            driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
            wait.until(ec.presence_of_element_located((By.ID, "jobs-table")))
            shots.append(tmp_path / "admin-phone.png")
            driver.save_screenshot(str(shots[-1]))
            _page_checks(driver)
            assert first in driver.find_element(By.ID, "jobs-table").text

            driver.set_window_size(1280, 1000)
            driver.refresh()
            shots.append(tmp_path / "admin-desktop.png")
            driver.save_screenshot(str(shots[-1]))
            _page_checks(driver)
            after_grace()
            question = act(
                driver, wait, f"button[data-action=prune][data-target='{first}']", "dropped"
            )
            assert first in question and "no longer be possible" in question
            question = act(
                driver, wait, "button[data-action=destroy][data-target='1']", "destroyed"
            )
            assert "v1" in question and "erased for good" in question

            driver.find_element(By.ID, "rotate").click()
            wait.until(ec.alert_is_present())
            driver.switch_to.alert.accept()
            wait.until(ec.presence_of_element_located((By.ID, "finished")))
            banner = driver.find_element(By.ID, "finished").text
            assert "succeeded" in banner and "key v3 is active" in banner, banner
            second = json.loads(app.cli("jobs", "--json", check=True).stdout)[-1]["id"]
            assert second in banner  # the id the CLI knows
            question = act(
                driver,
                wait,
                f"button[data-action=restore][data-target='{second}']",
                "restored 1980 value(s)",  # every 97th of the 2,000 users is NULL
            )
            assert second in question
            shots.append(tmp_path / "admin-after-actions.png")
            driver.save_screenshot(str(shots[-1]))
            assert_no_secret(driver.page_source, app.env["KEYTURN_KEK"], root, *PLAINTEXTS)
        finally:
            driver.quit()
    states = dict(app.sql("SELECT version, state FROM keyturn_keys"))
    assert states[1] == "destroyed" and states[3] == "active"
    assert app.sql("SELECT count(*) FROM users WHERE secret LIKE 'kt1:2:%'")[0][0] > 1_900
    for shot in shots:
        assert shot.stat().st_size > 10_000
        if os.environ.get("ADMIN_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(exist_ok=True)
            shutil.copy(shot, SCREENSHOTS / shot.name)
