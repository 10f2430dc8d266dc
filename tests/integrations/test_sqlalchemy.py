"""SQLAlchemy column types: tokens in the database, text in the app, through a rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, base_env, run_cli
from orm_app import CONFIG, Account, Base
from parallel_app import kill_mid_job_and_resume, replay_journal
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import keyturn
from keyturn import ConfigError, InvalidToken, UnqueryableColumn
from keyturn.integrations.sqlalchemy import EncryptedString, EncryptedText, configure

ORM_APP = Path(__file__).parents[1] / "orm_app.py"


def orm_db(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    """The accounts table on ``database``, a keyring, and the app's Store configured."""
    engine = create_engine(database.url)
    Base.metadata.create_all(engine)
    engine.dispose()
    (tmp_path / "keyturn.toml").write_text(CONFIG.format(url=database.url))
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    run_cli("init", cwd=tmp_path, env=env, check=True)
    return App(tmp_path, env)


@pytest.fixture
def store(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    app = orm_db(database, tmp_path, monkeypatch)
    with keyturn.open(app.config) as opened:
        configure(opened)
        try:
            yield opened
        finally:
            configure(None)


# Behaviour of the types alone, not of a backend: on SQLite.
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def raw(store: Any, query: str) -> list[tuple[Any, ...]]:
    """The stored values, past the ORM's types."""
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query))]


def write_raw(store: Any, query: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(query), params)


def test_round_trip_with_store_both_ways(store: Any) -> None:
    engine = store.engine
    with Session(engine) as session:
        session.add_all(
            [
                Account(id=1, name="a", api_key="sk_live_1", notes="pässwörd-秘密"),
                Account(id=2, name="b", api_key=None, notes=""),
            ]
        )
        session.commit()
    rows = dict((i, (k, n)) for i, k, n in raw(store, "SELECT id, api_key, notes FROM accounts"))
    assert rows[1][0].startswith("kt1:1:") and "sk_live_1" not in rows[1][0]
    assert store.decrypt(rows[1][0], context="accounts.api_key") == "sk_live_1"
    assert store.decrypt(rows[1][1], context="accounts.notes") == "pässwörd-秘密"
    assert rows[2] == (None, "")  # NULL stays NULL and empty stays empty, as in the CLI
    with Session(engine) as session:
        two = session.get(Account, 2)
        assert two is not None and (two.api_key, two.notes) == (None, "")
    # A token sealed by Store (as by the CLI's encrypt-existing) reads through the ORM.
    sealed = store.encrypt("sk_from_store", context="accounts.api_key")
    write_raw(store, "UPDATE accounts SET api_key = :v WHERE id = 2", v=sealed)
    with Session(engine) as session:
        one, two = session.get(Account, 1), session.get(Account, 2)
        assert one is not None and two is not None
        assert (one.api_key, one.notes) == ("sk_live_1", "pässwörd-秘密")
        assert two.api_key == "sk_from_store"


@sqlite_only
def test_reads_are_strict_and_unchanged_secrets_are_not_resealed(
    database: Database, store: Any
) -> None:
    with Session(store.engine) as session:
        session.add(Account(id=1, name="a", api_key="sk_1", notes="n"))
        session.commit()
    ((before,),) = raw(store, "SELECT api_key FROM accounts")
    with Session(store.engine) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.name = "renamed"
        session.commit()
    assert raw(store, "SELECT api_key FROM accounts") == [(before,)]
    # A token moved from another column, a damaged one, plaintext: all refused.
    ((notes,),) = raw(store, "SELECT notes FROM accounts")
    for bad in (notes, before[:-2] + "AA", "sk_plaintext"):
        write_raw(store, "UPDATE accounts SET api_key = :v", v=bad)
        with Session(store.engine) as session, pytest.raises(InvalidToken):
            session.get(Account, 1)


@sqlite_only
def test_queries_that_cannot_work_are_refused(database: Database, store: Any) -> None:
    column = Account.api_key
    for build in (
        lambda: select(Account).where(column == "sk_1"),
        lambda: select(Account).where(column != "sk_1"),
        lambda: select(Account).where(column.in_(["sk_1"])),
        lambda: select(Account).where(column.like("sk_%")),
        lambda: select(Account).where(column.startswith("sk")),
        lambda: select(Account).order_by(column.desc()),
        lambda: select(Account).order_by(column.asc()),
        lambda: select(Account).where(column == "sk_1"),
    ):
        with pytest.raises(UnqueryableColumn, match=r"accounts\.api_key is encrypted"):
            build()
    with Session(store.engine) as session:
        session.add(Account(id=1, name="a", api_key=None))
        session.commit()
        assert session.scalars(select(Account.id).where(column.is_(None))).all() == [1]
        assert session.scalars(select(Account.id).where(column == None)).all() == [1]  # noqa: E711
        assert session.scalars(select(Account.id).where(column.is_not(None))).all() == []
        with pytest.raises(UnqueryableColumn):
            session.scalars(select(Account.id).order_by(column)).all()


@sqlite_only
def test_core_tables_and_a_token_too_long_for_its_column(database: Database, store: Any) -> None:
    metadata = MetaData()
    hooks = Table(
        "hooks",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("secret", EncryptedString(60)),
        Column("body", EncryptedText()),
    )
    metadata.create_all(store.engine)
    assert hooks.c.secret.type.context == "hooks.secret"
    with store.engine.begin() as conn:
        conn.execute(hooks.insert().values(id=1, secret="whsec_short", body="x" * 500))
        with pytest.raises(StatementError) as refused:
            conn.execute(hooks.insert().values(id=2, secret="whsec_" + "y" * 40))
    assert isinstance(refused.value.orig, ConfigError)
    assert "hooks.secret: a 46-byte secret becomes a" in str(refused.value.orig)
    assert "y" * 40 not in str(refused.value)
    with store.engine.connect() as conn:
        assert conn.execute(select(hooks.c.secret, hooks.c.body)).one() == (
            "whsec_short",
            "x" * 500,
        )
    ((token,),) = raw(store, "SELECT secret FROM hooks")
    assert store.decrypt(token, context="hooks.secret") == "whsec_short"


@sqlite_only
def test_plaintext_is_read_only_in_the_migration_mode_and_counted(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = orm_db(database, tmp_path, monkeypatch)
    app.sql("INSERT INTO accounts (id, name, api_key) VALUES (1, 'a', 'sk_old1')")
    app.sql("INSERT INTO accounts (id, name, api_key) VALUES (2, 'b', 'sk_old2')")
    with keyturn.open(app.config) as store:
        configure(store)
        try:
            with Session(store.engine) as session, pytest.raises(InvalidToken):
                session.get(Account, 1)  # plaintext is refused by default
        finally:
            configure(None)
    migrating = 'column = "api_key"\nread_plaintext = true'
    app.write_config(app.config.read_text().replace('column = "api_key"', migrating))
    with keyturn.open(app.config) as store:
        configure(store)
        try:
            with Session(store.engine) as session:
                one, two = session.get(Account, 1), session.get(Account, 2)
                assert one is not None and two is not None
                assert (one.api_key, two.api_key) == ("sk_old1", "sk_old2")
                assert store.rewrap_needed["accounts.api_key"] == 2
                one.api_key = "sk_new1"  # a write seals; an unchanged value is left alone
                session.commit()
        finally:
            configure(None)
    stored = dict(app.sql("SELECT id, api_key FROM accounts"))
    assert stored[1].startswith("kt1:1:") and stored[2] == "sk_old2"
    app.cli("encrypt-existing", check=True)
    assert dict(app.sql("SELECT id, api_key FROM accounts"))[2].startswith("kt1:1:")


@sqlite_only
def test_a_column_bound_differently_in_the_model_and_the_config_is_refused(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = orm_db(database, tmp_path, monkeypatch)
    app.write_config(
        app.config.read_text().replace('column = "api_key"', 'column = "api_key"\nbind = "row"')
    )
    with keyturn.open(app.config) as store, pytest.raises(ConfigError, match='bind = "row"'):
        configure(store)
    configure(None)


def test_orm_app_through_a_killed_and_resumed_parallel_rotation(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ORM app process reads, writes, inserts and deletes without pause while
    `keyturn rotate --workers 2` runs, is SIGKILLed and resumed: it sees no error,
    and afterwards every row holds what the app last wrote, all on the new version."""
    app = orm_db(database, tmp_path, monkeypatch)
    expected: dict[int, str | None] = {}
    with keyturn.open(app.config) as store:
        configure(store)
        try:
            with Session(store.engine) as session:
                for i in range(1, 1501):
                    expected[i] = f"sk_{i}_initial"
                    session.add(Account(id=i, name=f"a{i}", api_key=expected[i], notes=f"n{i}"))
                session.commit()
        finally:
            configure(None)
    journal, stopfile = tmp_path / "journal.jsonl", tmp_path / "stop"
    orm = subprocess.Popen(
        [sys.executable, str(ORM_APP), str(app.config), str(journal), str(stopfile), "7"],
        cwd=tmp_path,
        env={**app.env, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        rotation = app.start("rotate", "--yes", "--workers", "2", "--max-rate", "1500",
                             "--rows-per-chunk", "300", output=subprocess.DEVNULL)  # fmt: skip
        kill_mid_job_and_resume(
            rotation, database, lambda: app.cli("rotate", "--yes", "--json", process=True)
        )
    finally:
        stopfile.touch()
        _, err = orm.communicate(timeout=60)
    replay_journal(journal, expected, orm, err)
    with keyturn.open(app.config) as store:
        rows = raw(store, "SELECT id, api_key, notes FROM accounts")
        assert {i for i, _, _ in rows} == set(expected)
        for i, api_key, notes in rows:
            assert api_key.startswith("kt1:2:") and notes.startswith("kt1:2:"), i
            assert store.decrypt(api_key, context="accounts.api_key") == expected[i]


MODELS = """\
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keyturn.integrations.sqlalchemy import EncryptedString


class Base(DeclarativeBase):
    pass


class Hook(Base):
    __tablename__ = "hooks_{n}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str | None] = mapped_column(EncryptedString(255))
"""


@sqlite_only
def test_models_in_the_config_are_the_one_source_of_columns(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models = "module:Base"` adds the encrypted columns the models declare; a listed
    column that disagrees with them is an error naming both."""
    n = os.urandom(4).hex()
    (tmp_path / f"models_{n}.py").write_text(MODELS.format(n=n))
    table = f"hooks_{n}"
    app = orm_db(database, tmp_path, monkeypatch)
    app.sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, url TEXT, secret VARCHAR(255))")
    app.sql(f"INSERT INTO {table} VALUES (1, 'https://x', 'whsec_1')")
    base = app.config.read_text()
    app.write_config(f'models = "models_{n}:Base"\n' + base)
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    assert f"{table}.secret" in {c["column"] for c in status["columns"]}
    app.cli("encrypt-existing", check=True)
    ((token,),) = app.sql(f"SELECT secret FROM {table}")
    assert token.startswith("kt1:1:")
    listed = f'models = "models_{n}:Base"\n' + base + f'\n[[columns]]\ntable = "{table}"\n'
    app.write_config(listed + 'column = "url"\n')
    refused = app.cli("status")
    assert refused.returncode == 2 and "not an encrypted type" in refused.stderr
    app.write_config(listed + 'column = "secret"\nprimary_key = "url"\n')
    refused = app.cli("status")
    assert refused.returncode == 2 and "declares ['id']" in refused.stderr
    app.write_config('models = "no_such_module_here:Base"\n' + base)
    refused = app.cli("status")
    assert refused.returncode == 2 and "cannot import no_such_module_here" in refused.stderr


def test_lazy_rewrap_reseals_what_the_app_read_and_leaves_what_it_changed(
    database: Database, store: Any
) -> None:
    """Opt-in: reads of tokens on an older version are noted; run() re-seals them in
    its own transactions, by compare-and-swap, leaving a row changed meanwhile."""
    from keyturn._core.keyring import ACTIVE, DataKey
    from keyturn.integrations.sqlalchemy import lazy_rewrap, no_lazy_rewrap
    from keyturn.keys import keystore

    with Session(store.engine) as session:
        session.add_all(Account(id=i, name="a", api_key=f"sk_{i}", notes="") for i in range(1, 31))
        session.commit()
    with store.engine.begin() as conn:  # what a rotation elsewhere does to the keyring
        keystore.retire(conn, 1)
        keystore.insert_version(conn, store.kek, store.keyring_id, DataKey.generate(2), ACTIVE, "t")
    store.reload()
    lazy = lazy_rewrap(limit=25)
    try:
        with Session(store.engine) as session:
            accounts = session.scalars(select(Account).order_by(Account.id)).all()
            assert [a.api_key for a in accounts] == [f"sk_{i}" for i in range(1, 31)]
            assert lazy.pending() == 25  # bounded
            accounts[0].api_key = "sk_changed_by_the_app"  # after the read, before run()
            session.commit()
        assert lazy.run(store) == 24
        assert lazy.pending() == 0
    finally:
        no_lazy_rewrap()
    rows = dict(raw(store, "SELECT id, api_key FROM accounts"))
    assert store.decrypt(rows[1], context="accounts.api_key") == "sk_changed_by_the_app"
    assert sum(token.startswith("kt1:2:") for token in rows.values()) == 25  # 24 + the app's
    with Session(store.engine) as session:
        assert [a.api_key for a in session.scalars(select(Account).order_by(Account.id))][1:] == [
            f"sk_{i}" for i in range(2, 31)
        ]


class RowBase(DeclarativeBase):
    pass


class Webhook(RowBase):
    """Row-bound: a token copied onto another row's secret does not open there."""

    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    url: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str | None] = mapped_column(EncryptedString(255, bind="row"))


ROW_COLUMNS = """
[[columns]]
table = "webhooks"
column = "secret"
bind = "row"
"""


def test_row_bound_columns_are_sealed_with_the_key(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = orm_db(database, tmp_path, monkeypatch)
    engine = create_engine(database.url)
    RowBase.metadata.create_all(engine)
    engine.dispose()
    app.write_config(app.config.read_text() + ROW_COLUMNS)
    with keyturn.open(app.config) as store:
        configure(store)
        try:
            with Session(store.engine) as session:
                session.add_all(
                    [Webhook(id=1, url="a", secret="whsec_one"), Webhook(id=2, url="b", secret="")]
                )
                session.commit()
                hook = session.get(Webhook, 1)
                assert hook is not None and hook.secret == "whsec_one"  # after the commit too
            rows = dict(raw(store, "SELECT id, secret FROM webhooks"))
            assert rows[2] == ""
            opened = store.decrypt(rows[1], context=keyturn.row_context("webhooks", "secret", (1,)))
            assert opened == "whsec_one"
            with Session(store.engine) as session:
                hook = session.get(Webhook, 1)
                assert hook is not None and hook.secret == "whsec_one"
                hook.url = "renamed"  # the secret is unchanged: not sealed again
                session.commit()
            assert dict(raw(store, "SELECT id, secret FROM webhooks"))[1] == rows[1]
            with Session(store.engine) as session:
                hook = session.get(Webhook, 2)
                assert hook is not None
                hook.secret = "whsec_two"
                session.commit()
            # The CLI sees the same contexts: verify opens every row-bound token.
            assert json.loads(app.cli("verify", "--json").stdout)["failed"] == 0
            # A token copied onto another row does not open there.
            write_raw(store, "UPDATE webhooks SET secret = :v WHERE id = 2", v=rows[1])
            with Session(store.engine) as session, pytest.raises(InvalidToken):
                session.get(Webhook, 2)
            # Written outside the ORM, a plaintext value has no key to be sealed with.
            with store.engine.begin() as conn, pytest.raises(StatementError) as outside:
                conn.execute(Webhook.__table__.insert().values(id=3, url="c", secret="x"))
            assert "bound to its rows" in str(outside.value.orig)
        finally:
            configure(None)


def test_a_row_bound_model_whose_key_the_database_generates_is_refused_when_defined() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigError, match=r"GeneratedKey: generated_keys.secret .*generated by"):

        class GeneratedKey(Base):
            """Row-bound, but the database generates the key after the value is sealed."""

            __tablename__ = "generated_keys"
            id: Mapped[int] = mapped_column(primary_key=True)
            secret: Mapped[str | None] = mapped_column(EncryptedText(bind="row"))

    class GivenKey(Base):  # the same with a key the app gives: accepted
        __tablename__ = "given_keys"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        secret: Mapped[str | None] = mapped_column(EncryptedText(bind="row"))


@pytest.mark.parametrize("database", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_encrypted_json_seals_the_fields_and_leaves_the_document_queryable(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EncryptedJSON: the ORM writes the fields as tokens bound to their paths, reads
    them back as text, `models =` discovers them for the CLI, which rotates them."""
    from keyturn.integrations.sqlalchemy import EncryptedJSON

    class JsonBase(DeclarativeBase):
        pass

    class Connector(JsonBase):
        __tablename__ = "connectors"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        config: Mapped[Any] = mapped_column(EncryptedJSON(["$.apiKey", "$.headers[*].value"]))

    engine = create_engine(database.url)
    JsonBase.metadata.create_all(engine)
    module = tmp_path / "json_models.py"
    module.write_text(
        "from typing import Any\n"
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "from keyturn.integrations.sqlalchemy import EncryptedJSON\n"
        "class Base(DeclarativeBase):\n    pass\n"
        "class Connector(Base):\n    __tablename__ = 'connectors'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)\n"
        "    config: Mapped[Any] = mapped_column("
        "EncryptedJSON(['$.apiKey', '$[\"headers\"][*].value']))\n"
    )
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\nmodels = "json_models:Base"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    app = App(tmp_path, env)
    app.cli("init", check=True)
    config = {"name": "github", "apiKey": "sk_live_json", "headers": [{"value": "hv-1"}, {}]}
    with keyturn.open(app.config) as store:
        configure(store)
        try:
            with Session(engine) as session:
                session.add(Connector(id=1, config=config))
                session.commit()
            ((stored,),) = raw(store, "SELECT config FROM connectors")
            document = stored if isinstance(stored, str) else json.dumps(stored)
            assert "sk_live_json" not in document and "hv-1" not in document
            assert '"github"' in document
            rotated = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)
            assert rotated["columns"]["connectors.config$.apiKey"]["rotated"] == 1
            assert rotated["columns"]["connectors.config$.headers[*].value"]["rotated"] == 1
            with Session(engine) as session:
                assert session.get(Connector, 1).config == config  # type: ignore[union-attr]
                found = session.scalars(
                    select(Connector).where(Connector.config["name"].as_string() == "github")
                ).all()
                assert [c.id for c in found] == [1]
        finally:
            configure(None)
            engine.dispose()
