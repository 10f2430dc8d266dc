"""keyturn.toml: every error names the offending entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import App, base_env

from keyturn import ConfigError, load_config

GOOD = """\
database = "sqlite:///app.db"
[[columns]]
table = "users"
column = "secret"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keyturn.toml"
    path.write_text(text)
    return path


def test_relative_sqlite_path_is_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.database == f"sqlite:///{tmp_path / 'app.db'}"
    assert config.columns[0].primary_key == ("id",)
    assert config.columns[0].context((7,)) == "users.secret"


def test_row_binding_context_names_the_primary_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + 'bind = "row"\nprimary_key = ["a", "b"]\n'))
    assert config.columns[0].context((1, "x")) == "users.secret#1,x"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD + "colour = 1\n", "unknown key.*colour"),
        ("databse = 'x'\n", "unknown key.*databse"),
        ("[[columns]]\ntable='t'\ncolumn='c'\n", "database"),
        ('database = "sqlite:///a.db"\n[[columns]]\ntable = "users"\n', "entry 1.*column"),
        (GOOD + 'bind = "table"\n', r"users\.secret.*bind"),
        (GOOD + "primary_key = []\n", "primary_key"),
        (GOOD + GOOD.split("\n", 1)[1], "configured twice"),
        ('database = "not a url"\n', "SQLAlchemy URL"),
        ('database = "sqlite:///a.db"\ncryptoperiod_days = 0\n', "cryptoperiod_days"),
        ('database = "sqlite:///a.db"\nkek = 5\n', "kek"),
        ("database = ", "not valid TOML"),
        ('database = "env:NO_SUCH_VAR_KT"\n', "NO_SUCH_VAR_KT"),
        (GOOD + "where = \"key = 'smtp_pass'\"\n", "`where` must be a table of column"),
        (GOOD + "where = { key = [] }\n", "`key` must list 1 to"),
        (GOOD + 'where = { key = ["a", 1] }\n', "of one type"),
        (GOOD + "where = { key = [true] }\n", "of one type"),
        (GOOD + "where = { key = [1.5] }\n", "of one type"),
        (GOOD + 'where = { key = { a = "b" } }\n', "of one type"),
        (GOOD + 'where = { secret = ["x"] }\n', "cannot filter on the secret column"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_where_selects_rows_by_listed_values(tmp_path: Path) -> None:
    text = GOOD + 'where = { scope = 1, key = ["smtp_pass", "smtp_pass", "oidc"] }\n'
    (column,) = load_config(write(tmp_path, text)).columns
    assert column.where == (("key", ("smtp_pass", "oidc")), ("scope", (1,)))
    assert column.describe_where() == "key in [smtp_pass, oidc] and scope in [1]"


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ('{ name = ["smtp_pass"] }', "has no column 'name'"),
        ("{ key = [1] }", "is VARCHAR.*list strings"),
        ('{ scope = ["1"] }', "is INTEGER.*list integers"),
        ("{ created = [1] }", "only text and integer columns"),
    ],
)
def test_a_where_the_schema_cannot_honour_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, match: str
) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute(
            "CREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, scope INTEGER, "
            "created DATETIME, value TEXT)"
        )
    conn.close()
    write(
        tmp_path,
        'database = "sqlite:///app.db"\n[[columns]]\ntable = "settings"\ncolumn = "value"\n'
        f'primary_key = "key"\nwhere = {where}\n',
    )
    app = App(tmp_path, {**base_env(), "KEYTURN_KEK": "ab" * 32})
    proc = app.cli("init")
    assert proc.returncode == 2 and re.search(match, proc.stderr), proc.stderr
    assert "keyturn_keys" not in proc.stderr
    assert app.sql("SELECT name FROM sqlite_master WHERE name LIKE 'keyturn%'") == []


def test_missing_config_says_how_to_point_at_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYTURN_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--config"):
        load_config()
    monkeypatch.setenv("KEYTURN_CONFIG", str(write(tmp_path, GOOD)))
    assert load_config().columns[0].name == "users.secret"


def test_config_repr_hides_the_database_password(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'database = "postgresql://u:hunter2@127.0.0.1/db"\n'))
    assert "hunter2" not in repr(config)


def test_the_app_contract_as_rotation_md_shows_it(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "ROTATION.md").read_text()
    snippet = doc.split("## The app-process contract", 1)[1].split("```toml\n", 1)[1]
    snippet = snippet.split("```", 1)[0]
    apps = load_config(write(tmp_path, GOOD + snippet)).apps
    assert (apps.refresh_seconds, apps.write_margin_seconds, apps.grace_seconds) == (30, 60, 90)
    assert load_config(write(tmp_path, GOOD)).apps == apps, "the snippet shows the defaults"


@pytest.mark.parametrize(
    "apps",
    ["[apps]\nrefresh_seconds = 0", '[apps]\nrefresh_seconds = "30"', "[apps]\nevery = 3"],
)
def test_a_bad_app_contract_is_refused(tmp_path: Path, apps: str) -> None:
    with pytest.raises(ConfigError, match=r"\[apps\]"):
        load_config(write(tmp_path, GOOD + apps))


def test_trusted_proxies(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + '[server]\ntrusted_proxies = ["10.0.0.0/8"]\n'))
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(write(tmp_path, GOOD + '[server]\ntrusted_proxies = ["nope"]\n'))
