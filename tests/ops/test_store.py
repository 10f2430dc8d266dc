"""The library API against real SQLite files."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import PLAINTEXTS, App
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keyturn
from keyturn import (
    InvalidToken,
    NotInitialized,
    SchemaError,
    UnknownKeyVersion,
    WrongKEK,
)
from keyturn._core.keyring import ACTIVE, RETIRED, DataKey
from keyturn.keys import keystore


def init(app: App) -> None:
    app.cli("init", check=True)


def add_version(store: keyturn.Store, version: int) -> None:
    """What a rotation in another process does to the keyring."""
    with store.engine.begin() as conn:
        keystore.retire(conn, store.active_version)
        keystore.insert_version(
            conn, store.kek, store.keyring_id, DataKey.generate(version), ACTIVE, "test"
        )


def test_open_encrypt_decrypt(app: App) -> None:
    init(app)
    with keyturn.open() as store:
        token = store.encrypt("sk_live_x", context="users.secret")
        assert token.startswith("kt1:1:")
        assert store.decrypt(token, context="users.secret") == "sk_live_x"
        assert store.decrypt_bytes(store.encrypt(b"\x00\xff", context="c"), context="c") == (
            b"\x00\xff"
        )
        with pytest.raises(InvalidToken):
            store.decrypt(token, context="users.other")


def test_open_before_init_says_run_init(app: App) -> None:
    with pytest.raises(NotInitialized, match="keyturn init"):
        keyturn.open()


def test_open_with_wrong_kek_fails_at_startup(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    init(app)
    monkeypatch.setenv("KEYTURN_KEK", secrets.token_hex(32))
    with pytest.raises(WrongKEK, match="does not open key version 1"):
        keyturn.open()


def test_store_follows_a_rotation_made_elsewhere(app: App) -> None:
    init(app)
    with keyturn.open() as old, keyturn.open(refresh_seconds=0.0) as other:
        v1_token = old.encrypt("before", context="c")
        add_version(other, 2)
        other.reload()
        v2_token = other.encrypt("after", context="c")
        assert v2_token.startswith("kt1:2:")
        # `old` has never seen v2: it reloads on the unknown-but-newer version...
        assert old.decrypt(v2_token, context="c") == "after"
        assert old.decrypt(v1_token, context="c") == "before"
        # ...and, once reloaded, encrypts under the new active version.
        assert old.encrypt("next", context="c").startswith("kt1:2:")
        assert {v.version: v.state for v in old.versions} == {1: RETIRED, 2: ACTIVE}


def test_store_picks_up_new_active_version_within_ttl(app: App) -> None:
    init(app)
    with keyturn.open(refresh_seconds=0.0) as store, keyturn.open() as other:
        add_version(other, 2)
        assert store.encrypt("x", context="c").startswith("kt1:2:")


def test_unknown_older_version_does_not_reload(app: App) -> None:
    init(app)
    with keyturn.open() as store:
        add_version(store, 2)
        store.reload()
        forged = store.encrypt("x", context="c").replace("kt1:2:", "kt1:9:")
        with pytest.raises(UnknownKeyVersion):
            store.decrypt(forged, context="c")
        old_version = forged.replace("kt1:9:", "kt1:1:")
        with pytest.raises(InvalidToken):
            store.decrypt(old_version, context="c")


@pytest.mark.parametrize(
    ("ddl", "match"),
    [
        ("DROP TABLE integrations", "table 'integrations' does not exist"),
        ("ALTER TABLE users RENAME COLUMN secret TO other", "has no column 'secret'"),
        ("ALTER TABLE users ADD COLUMN tiny VARCHAR(20)", "too narrow"),
        ("ALTER TABLE users ADD COLUMN num INTEGER", "cannot hold tokens"),
    ],
)
def test_schema_problems_name_the_column(app: App, ddl: str, match: str) -> None:
    init(app)
    with sqlite3.connect(app.db) as conn:
        conn.execute(ddl)
    conn.close()
    text = app.config.read_text()
    if "ADD COLUMN" in ddl:
        col = ddl.split()[5]
        text += f'\n[[columns]]\ntable = "users"\ncolumn = "{col}"\n'
        app.write_config(text)
    with pytest.raises(SchemaError, match=match):
        keyturn.open()


def test_encrypt_existing_library_call_and_no_secret_in_logs(
    app: App, expected: dict[tuple[str, int], str | None], caplog: pytest.LogCaptureFixture
) -> None:
    init(app)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # restored after the test
    with keyturn.open() as store:
        report = keyturn.encrypt_existing(store)
        status = keyturn.status(store)
    assert report.totals["encrypted"] == sum(1 for v in expected.values() if v)
    assert report.failed == 0
    for secret in PLAINTEXTS:
        assert secret not in caplog.text
        assert secret not in repr(report) + repr(status) + repr(store)
    assert os.environ["KEYTURN_KEK"] not in caplog.text
    users = {c.column: c for c in status.columns}["users.secret"]
    assert users.plaintext == 0 and users.by_version == {
        1: report.columns["users.secret"]["encrypted"]
    }


_HEX_KEY = "0f3a9c4be17d" * 6  # 72 hex digits: shaped like another scheme's ciphertext
_VALUES = {
    # kind: (a value, whether a batch of such values is judged at once)
    "plaintext": ("hunter2", True),
    "null": (None, True),
    "empty": ("", True),
    "long plaintext": ("correct horse battery staple, and then some", True),
    "api key": ("ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF2hJ5", True),
    "kt1 text": ("kt1:5:abc", False),
    "kt1 after a newline": ("pass\nkt1:x", False),
    "hex key": (_HEX_KEY, False),
    "int": (5, False),
    "bytes": (b"\xffraw", False),
}


@contextmanager
def _batch(
    app: App, name: str, kinds: list[str]
) -> Iterator[tuple[keyturn.Store, Any, list[tuple[int]], list[Any]]]:
    """A store on ``app`` (initialized once), its column ``name``, and a batch holding
    a value of each of ``kinds``: one of ``_VALUES``, or a token sealed for its row
    ("token") or for another place ("moved token")."""
    if not app.sql("SELECT name FROM sqlite_master WHERE name = 'keyturn_keys'"):
        init(app)
    with keyturn.open() as store:
        column = {c.spec.name: c for c in store.bound_columns()}[name]
        pks = [(j,) for j in range(len(kinds))]
        sealed_for = {"token": column.spec.context, "moved token": lambda pk: "other.place"}
        values = [
            store.encrypt("s3cret", context=sealed_for[kind](pk))
            if kind in sealed_for
            else _VALUES[kind][0]
            for kind, pk in zip(kinds, pks, strict=True)
        ]
        yield store, column, pks, values


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.one_of(
        st.lists(st.sampled_from(["plaintext", "null", "empty"]), max_size=30),
        st.lists(st.sampled_from([*sorted(_VALUES), "token", "moved token"]), max_size=30),
    ),
    name=st.sampled_from(["users.secret", "integrations.token"]),
    include_unknown=st.booleans(),
)
def test_encrypt_existing_judges_a_plain_batch_at_once_as_value_by_value(
    app: App, kinds: list[str], name: str, include_unknown: bool
) -> None:
    """A batch of NULLs, '' and plaintext is judged at once; every batch is decided
    as each value alone would be, and sealed where it stands."""
    from keyturn.ops.encrypt_existing import _batch_decider, _decider, _plain_positions

    with _batch(app, name, kinds) as (store, column, pks, values):
        quick = {kind for kind, (_, at_once) in _VALUES.items() if at_once}
        if include_unknown:
            quick.add("hex key")
        assert (_plain_positions(values, include_unknown) is not None) == (set(kinds) <= quick)
        categories, news = _batch_decider(store, column, include_unknown)(pks, values)
        one = _decider(store, column, include_unknown)
        assert categories == [one(pk, value)[0] for pk, value in zip(pks, values, strict=True)]
        for pk, value, category, new in zip(pks, values, categories, news, strict=True):
            if category == "encrypted":
                assert new is not None and isinstance(value, str | bytes)
                opened = store.decrypt_bytes(new, context=column.spec.context(pk))
                assert opened == (value.encode() if isinstance(value, str) else value)
            else:
                assert new is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.one_of(
        st.lists(st.just("token"), max_size=30),
        st.lists(
            st.sampled_from(["token", "moved token", "plaintext", "null", "empty", "int"]),
            max_size=30,
        ),
    ),
    name=st.sampled_from(["users.secret", "integrations.token"]),
)
def test_verify_decides_a_batch_as_value_by_value(app: App, kinds: list[str], name: str) -> None:
    """A batch of text is opened at once; each value counts as it would alone."""
    from keyturn.ops.verify import _batch_decider, _decider

    with _batch(app, name, kinds) as (store, column, pks, values):
        categories, news = _batch_decider(store, column, True)(pks, values)
        one = _decider(store, column, True)
        assert categories == [one(pk, value)[0] for pk, value in zip(pks, values, strict=True)]
        assert ("ok" in categories) == ("token" in kinds)
        assert news == [None] * len(values)
