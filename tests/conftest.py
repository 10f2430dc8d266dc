"""Shared fixtures: a throwaway app database with a config, and a CLI runner."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"

# Secrets planted in fixtures; tests search every output and log for them.
PLAINTEXTS = [
    "sk_live_51H8PLAINTEXTzzA",
    "ya29.OAUTHTOKEN-plaintext-qq",
    "JBSWY3DPEHPK3PXPTOTPSEED",
    "pässwörd-ünïcode-秘密",
]


def vectors(kind: str) -> Any:
    """Parametrize a test over one list in tests/vectors/kt1.json, ids from the data."""
    data = json.loads((VECTORS / "kt1.json").read_text(encoding="utf-8"))[kind]
    ids = [v.get("description") or f"{v['version']}-{v['context']}" for v in data]
    return pytest.mark.parametrize("vector", data, ids=ids)


@dataclass
class App:
    """An application directory: app.db, keyturn.toml, and the env to run keyturn with."""

    dir: Path
    env: dict[str, str]

    @property
    def db(self) -> Path:
        return self.dir / "app.db"

    @property
    def config(self) -> Path:
        return self.dir / "keyturn.toml"

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(query, params).fetchall()
        conn.close()
        return rows

    def cli(self, *args: str, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``keyturn ARGS`` run in this directory (in this process; see :func:`run_cli`)."""
        kw.setdefault("env", self.env)
        return run_cli(*args, cwd=self.dir, check=check, **kw)

    def write_config(self, text: str) -> None:
        self.config.write_text(text, encoding="utf-8")

    def start(self, *args: str, output: int = subprocess.PIPE) -> subprocess.Popen[str]:
        """``keyturn ARGS`` running in the background (stdout and stderr to ``output``)."""
        return subprocess.Popen(
            [sys.executable, "-m", "keyturn", *args],
            cwd=self.dir,
            env=self.env,
            stdout=output,
            stderr=output,
            text=True,
        )

    def kill_at_random(
        self, *args: str, runs: int, window: tuple[float, float], finished: Any = None
    ) -> int:
        """Run ``keyturn ARGS`` up to ``runs`` times, SIGKILLing each at a random
        moment in ``window`` seconds; stop early once ``finished()``. Returns the kills."""
        rng = random.Random()
        kills = 0
        for _ in range(runs):
            proc = self.start(*args, output=subprocess.DEVNULL)
            time.sleep(rng.uniform(*window))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if finished is not None and finished():
                break
        return kills


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str],
    check: bool = False,
    timeout: float = 120,
    input: str | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``keyturn ARGS`` in ``cwd`` with exactly ``env``: in this process through click's
    runner unless ``process`` (a process boundary under test) or KEYTURN_TEST_PROCESSES=1."""
    if process or os.environ.get("KEYTURN_TEST_PROCESSES") == "1":
        proc = subprocess.run(
            [sys.executable, "-m", "keyturn", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
        )
    else:
        proc = _run_in_process(list(args), cwd, env, input)
    if check and proc.returncode != 0:
        raise AssertionError(f"keyturn {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def _run_in_process(
    args: list[str], cwd: Path, env: dict[str, str], input: str | None
) -> subprocess.CompletedProcess[str]:
    """What ``python -m keyturn ARGS`` would print and exit with, without starting Python.

    The environment and working directory are swapped for the call, as a new
    process would see them; an uncaught exception ends as Python's would, with
    a traceback on stderr and exit code 1, so leak checks still see it."""
    from click.testing import CliRunner

    from keyturn.cli import cli
    from keyturn.db.database import quiet_driver_logs

    quiet_driver_logs()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, args, input=input, prog_name="keyturn")
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    stderr, code = result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
        code = 1
    return subprocess.CompletedProcess(["keyturn", *args], code, result.stdout, stderr)


# The app contract's grace is kept short so tests can retire and destroy a
# version right after the rotation that replaced it (the default is 90 s).
APPS = """
[apps]
refresh_seconds = 0.1
write_margin_seconds = 0.1
"""


def after_grace() -> None:
    """Waits out the [apps] grace above, after which a replaced version may be destroyed."""
    time.sleep(0.25)


CONFIG = (
    """\
database = "sqlite:///app.db"

[[columns]]
table = "users"
column = "secret"
primary_key = "id"

[[columns]]
table = "integrations"
column = "token"
primary_key = "id"
bind = "row"
"""
    + APPS
)


def make_app_db(path: Path, rows: int = 8) -> dict[tuple[str, int], str | None]:
    """users(id, name, secret) and integrations(id, kind, token) with plaintext secrets."""
    expected: dict[tuple[str, int], str | None] = {}
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, secret VARCHAR(255))")
    conn.execute("CREATE TABLE integrations (id INTEGER PRIMARY KEY, kind TEXT, token TEXT)")
    for i in range(1, rows + 1):
        value: str | None = PLAINTEXTS[i % len(PLAINTEXTS)] + f"-{i}"
        if i % 7 == 0:
            value = None
        elif i % 5 == 0:
            value = ""
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", (i, f"user{i}", value))
        expected[("users", i)] = value
        token = PLAINTEXTS[(i + 1) % len(PLAINTEXTS)] + f"-int{i}"
        conn.execute("INSERT INTO integrations VALUES (?, ?, ?)", (i, "oauth", token))
        expected[("integrations", i)] = token
    conn.commit()
    conn.close()
    return expected


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, **env: str) -> App:
    """An app in ``tmp_path`` (the working directory) with ``config`` as keyturn.toml,
    a fresh KEK and ``env`` set for this process and for the CLI it runs."""
    (tmp_path / "keyturn.toml").write_text(config, encoding="utf-8")
    keys = {"KEYTURN_KEK": secrets.token_hex(32), **env}
    for name in list(os.environ):
        if name.startswith("KEYTURN_"):
            monkeypatch.delenv(name)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return App(tmp_path, {**base_env(), **keys})


def key_file(path: Path) -> Path:
    """A new random 256-bit KEK in a key file with mode 0600, as keyturn requires."""
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    return path


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def kek_hex() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def app(tmp_path: Path, kek_hex: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """An app dir with a plaintext database, the default config, and KEYTURN_KEK set."""
    for name in list(os.environ):
        if name.startswith("KEYTURN_"):
            monkeypatch.delenv(name)
    make_app_db(tmp_path / "app.db")
    (tmp_path / "keyturn.toml").write_text(CONFIG, encoding="utf-8")
    env = base_env()
    env["KEYTURN_KEK"] = kek_hex
    monkeypatch.setenv("KEYTURN_KEK", kek_hex)
    monkeypatch.chdir(tmp_path)
    yield App(tmp_path, env)


@pytest.fixture
def expected(app: App) -> dict[tuple[str, int], str | None]:
    """The plaintext the fixture database was filled with, by (table, id)."""
    out: dict[tuple[str, int], str | None] = {}
    for i, v in app.sql("SELECT id, secret FROM users"):
        out[("users", i)] = v
    for i, v in app.sql("SELECT id, token FROM integrations"):
        out[("integrations", i)] = v
    return out


def assert_no_secret(text: str, *secrets_: str) -> None:
    for s in (*PLAINTEXTS, *secrets_):
        assert s not in text, "a secret leaked into output"


def users_only(app: App) -> None:
    """Configure only users.secret (the bulk tests fill only that table)."""
    app.write_config(app.config.read_text().split('[[columns]]\ntable = "integrations"')[0])


def fill_users(app: App, rows: int) -> dict[int, str | None]:
    """Replace users with ``rows`` plaintext secrets (every 97th NULL)."""
    values: dict[int, str | None] = {}
    with sqlite3.connect(app.db) as conn:
        conn.execute("DELETE FROM users")
        conn.execute("DELETE FROM integrations")
        batch = []
        for i in range(1, rows + 1):
            value = None if i % 97 == 0 else f"secret-{i}-{secrets.token_hex(6)}"
            values[i] = value
            batch.append((i, f"u{i}", value))
        conn.executemany("INSERT INTO users VALUES (?, ?, ?)", batch)
    conn.close()
    return values


def pack_form(data: bytes) -> str:
    """The form a backup pack keeps its values in, from its header (docs/FORMAT.md,
    "Backups"): "tokens", "opened", "text" or "bytes"."""
    (size,) = struct.unpack_from(">I", data, 4)
    form = json.loads(zlib.decompress(data[8 : 8 + size]))["form"]
    assert isinstance(form, str)
    return form


def backed_up(url: str, job: str | None = None) -> list[tuple[str, str, Any, Any]]:
    """(table, column, primary key, value replaced) of every value the backups of
    ``job`` (or of every job) keep in the database at ``url``."""
    from keyturn.db.database import connect
    from keyturn.engine import backups

    engine = connect(url)
    try:
        with engine.connect() as conn:
            return list(backups.entries(conn, job))
    finally:
        engine.dispose()


# -- real database servers ----------------------------------------------------

SERVERS = {
    "postgresql": ("postgresql+psycopg://postgres@127.0.0.1:5432/", 5432, "test"),
    "mysql": ("mysql+pymysql://root@127.0.0.1:3306/", 3306, "test"),
}


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Database:
    """A throwaway database on one backend; ``url`` is what keyturn.toml names."""

    kind: str
    url: str

    def execute(self, *statements: str, **params: Any) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params)
        engine.dispose()

    def rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        with engine.connect() as conn:
            result = [tuple(r) for r in conn.execute(text(query), params)]
        engine.dispose()
        return result


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database on SQLite, PostgreSQL or MariaDB, dropped afterwards."""
    kind = request.param
    if kind == "sqlite":
        sqlite3.connect(tmp_path / "app.db").close()
        yield Database(kind, f"sqlite:///{tmp_path / 'app.db'}")
        return
    base, port, admin_db = SERVERS[kind]
    if not _reachable(port):
        reason = f"{kind} is not reachable on 127.0.0.1:{port}"
        if os.environ.get("KEYTURN_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and KEYTURN_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    name = "kt_" + secrets.token_hex(5)
    admin = create_engine(base + admin_db, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield Database(kind, base + name)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A skipped browser test is easy to miss among dots: say it in a banner."""
    skipped = terminalreporter.stats.get("skipped", [])
    if any("chromium" in str(getattr(r, "longrepr", "")) for r in skipped):
        terminalreporter.write_sep(
            "!",
            "THE ADMIN PAGE BROWSER TEST DID NOT RUN: apt-get install chromium "
            "chromium-driver (CI installs them)",
            red=True,
            bold=True,
        )
