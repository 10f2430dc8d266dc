"""Row contexts: unambiguous for every primary key, unchanged where 0.1's were already."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import VECTORS, App
from hypothesis import example, given
from hypothesis import strategies as st

import keyturn
from keyturn._core.context import row_context, unescaped_row_context

CONTEXTS = json.loads((VECTORS / "kt1.json").read_text(encoding="utf-8"))["contexts"]
parts = st.lists(st.text() | st.integers(), min_size=1, max_size=4)


def split_row_context(context: str) -> list[str]:
    """The inverse of row_context's key encoding: split on unescaped commas, unescape."""
    parts, current = [], []
    chars = iter(context.split("#", 1)[1])
    for char in chars:
        if char == "\\":
            current.append(next(chars))
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    return [*parts, "".join(current)]


def test_the_vectors() -> None:
    for case in CONTEXTS:
        assert row_context(case["table"], case["column"], case["pk"]) == case["context"], case


@given(parts)
@example(["\\", ""])  # the test's own inverse once dropped an escaped backslash before a comma
def test_the_key_can_be_read_back(pk: list[str | int]) -> None:
    assert split_row_context(row_context("t", "c", pk)) == [str(v) for v in pk]


@given(parts, parts)
def test_different_keys_never_share_a_context(a: list[str | int], b: list[str | int]) -> None:
    if [str(v) for v in a] != [str(v) for v in b]:
        assert row_context("t", "c", a) != row_context("t", "c", b)


@given(parts)
def test_keys_without_separators_keep_their_old_bytes(pk: list[str | int]) -> None:
    old = "t.c#" + ",".join(str(v) for v in pk)
    if unescaped_row_context("t", "c", pk) is None:
        assert row_context("t", "c", pk) == old
    else:
        assert unescaped_row_context("t", "c", pk) == old


CONFIG = """\
database = "sqlite:///app.db"

[[columns]]
table = "orders"
column = "token"
primary_key = ["a", "b"]
bind = "row"
"""


def orders_app(app: App) -> None:
    app.write_config(CONFIG)
    with sqlite3.connect(app.db) as conn:
        conn.execute("CREATE TABLE orders (a TEXT, b TEXT, token TEXT, PRIMARY KEY (a, b))")
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)",
            [("a,b", "c", "secret-one"), ("a", "b,c", "secret-two"), ("x\\", "y", "three")],
        )
    conn.close()
    app.cli("init", check=True)


def test_a_token_moved_between_rows_with_the_same_old_context_fails(app: App) -> None:
    orders_app(app)
    app.cli("encrypt-existing", check=True)
    assert app.cli("verify").returncode == 0
    (one,) = app.sql("SELECT token FROM orders WHERE a = 'a,b'")[0]
    app.sql("UPDATE orders SET token = ? WHERE a = 'a'", (one,))
    report = json.loads(app.cli("verify", "--json").stdout)
    assert report["failed"] == 1
    assert report["failed_rows"][0]["pk"] == ["a", "b,c"]


def test_a_token_sealed_under_the_old_context_opens_and_rotate_reseals_it(app: App) -> None:
    orders_app(app)
    with keyturn.open(app.config) as store:
        for a, b, value in app.sql("SELECT a, b, token FROM orders"):
            old = unescaped_row_context("orders", "token", (a, b)) or row_context(
                "orders", "token", (a, b)
            )
            app.sql(
                "UPDATE orders SET token = ? WHERE a = ? AND b = ?",
                (store.encrypt(value, context=old), a, b),
            )
    assert app.cli("verify").returncode == 0
    assert json.loads(app.cli("encrypt-existing", "--json").stdout)["failed"] == 0
    app.cli("rotate", "--yes", check=True)
    with keyturn.open(app.config) as store:
        for a, b, token in app.sql("SELECT a, b, token FROM orders"):
            plain = store.decrypt(token, context=row_context("orders", "token", (a, b)))
            assert plain in ("secret-one", "secret-two", "three")
            old = unescaped_row_context("orders", "token", (a, b))
            assert old is not None  # every key here has a separator
            with pytest.raises(keyturn.InvalidToken):
                store.decrypt(token, context=old)
