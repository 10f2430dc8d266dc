"""Hardening: what an attacker's run and a new user's run found (issue 16), each kept
by a test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import App, Database, base_env

import keyturn


def odd_names_app(database: Database, tmp_path: Path) -> App:
    """A table and columns whose names hold ``%`` (and a space), with plaintext secrets."""
    q = '"' if database.kind != "mysql" else "`"
    database.execute(
        f"CREATE TABLE {q}pct%t{q} ({q}i%d{q} INTEGER PRIMARY KEY, {q}se%c ret{q} TEXT)"
    )
    for i in range(1, 51):
        database.execute(
            f"INSERT INTO {q}pct%t{q} VALUES (:i, :v)", i=i, v=f"sk_{i}_%s%%"
        )
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "pct%t"\ncolumn = "se%c ret"\nprimary_key = "i%d"\nbind = "row"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    return App(tmp_path, env)


def test_percent_in_table_and_column_names(database: Database, tmp_path: Path) -> None:
    app = odd_names_app(database, tmp_path)
    app.cli("init", check=True)
    assert json.loads(app.cli("encrypt-existing", "--json", check=True).stdout)["encrypted"] == 50
    for args in (["rotate", "--yes"], ["rotate", "--yes", "--workers", "2"]):
        proc = app.cli(*args, "--json")
        assert proc.returncode == 0, proc.stderr
    assert json.loads(app.cli("verify", "--json", check=True).stdout)["ok"] == 50
    os.environ["KEYTURN_KEK"] = app.env["KEYTURN_KEK"]
    try:
        with keyturn.open(app.config) as store:
            q = '"' if database.kind != "mysql" else "`"
            for i, v in database.rows(f"SELECT {q}i%d{q}, {q}se%c ret{q} FROM {q}pct%t{q}"):
                assert v.startswith("kt1:3:")
                assert store.decrypt(v, context=f"pct%t.se%c ret#{i}") == f"sk_{i}_%s%%"
    finally:
        del os.environ["KEYTURN_KEK"]
