"""Core and rotation guarantees on every backend: SQLite, PostgreSQL, MariaDB.

Each test gets its own freshly created database on the real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import App, Database, assert_no_secret
from hypothesis import example, given, settings
from hypothesis import strategies as st

import keyturn

PK_TYPES = {
    "int": ("id INTEGER", ["id"]),
    "text": ("id VARCHAR(40)", ["id"]),
    "composite": ("tenant VARCHAR(20), id INTEGER", ["tenant", "id"]),
    # Keys the MariaDB bulk swap must bind rather than inline: quotes, backslash, %s.
    "odd": ("id VARCHAR(40)", ["id"]),
}


def setup_app(
    database: Database,
    tmp_path: Path,
    pk_type: str,
    monkeypatch: pytest.MonkeyPatch,
    create: bool = True,
) -> tuple[App, dict[tuple[Any, ...], str | None]]:
    """An app's ``creds`` table of 40 rows (``create=False``: made already) and its
    keyturn.toml; the rows' values by key and column."""
    columns, pk = PK_TYPES[pk_type]
    if create:
        database.execute(f"CREATE TABLE creds ({columns}, api_key VARCHAR(255), oauth TEXT)")
    expected: dict[tuple[Any, ...], str | None] = {}
    for i in range(1, 41):
        key: tuple[Any, ...] = {
            "int": (i,),
            "text": (f"user-{i:03d}",),
            "composite": (f"t{i % 3}", i),
            "odd": (f"o'b\\r%s\"-ü{i:03d}",),
        }[pk_type]
        api = None if i % 9 == 0 else ("" if i % 10 == 0 else f"sk_live_{i}_Päss ")
        oauth = f"ya29.token-{i}"
        names = ", ".join(pk)
        marks = ", ".join(f":k{j}" for j in range(len(pk)))
        database.execute(
            f"INSERT INTO creds ({names}, api_key, oauth) VALUES ({marks}, :a, :o)",
            **{f"k{j}": v for j, v in enumerate(key)},
            a=api,
            o=oauth,
        )
        expected[(*key, "api_key")] = api
        expected[(*key, "oauth")] = oauth
    pk_toml = json.dumps(pk)
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        f'[[columns]]\ntable = "creds"\ncolumn = "api_key"\nprimary_key = {pk_toml}\n'
        'bind = "row"\n'
        f'[[columns]]\ntable = "creds"\ncolumn = "oauth"\nprimary_key = {pk_toml}\n'
    )
    kek = secrets.token_hex(32)
    monkeypatch.setenv("KEYTURN_KEK", kek)
    monkeypatch.chdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env["KEYTURN_KEK"] = kek
    return App(tmp_path, env), expected


def read_back(database: Database, pk: list[str]) -> dict[tuple[Any, ...], str | None]:
    out: dict[tuple[Any, ...], str | None] = {}
    with keyturn.open() as store:
        for row in database.rows(f"SELECT {', '.join(pk)}, api_key, oauth FROM creds"):
            key, api, oauth = tuple(row[: len(pk)]), row[len(pk)], row[len(pk) + 1]
            ctx = keyturn.row_context("creds", "api_key", key)
            out[(*key, "api_key")] = store.decrypt(api, context=ctx) if api else api
            out[(*key, "oauth")] = store.decrypt(oauth, context="creds.oauth")
    return out


def snapshot(database: Database) -> list[list[tuple[Any, ...]]]:
    return [
        sorted(database.rows(f"SELECT * FROM {t}"), key=repr)
        for t in ("creds", "keyturn_keys", "keyturn_meta")
    ]


@pytest.mark.parametrize("pk_type", list(PK_TYPES))
def test_take_over_rotate_restore(
    database: Database, tmp_path: Path, pk_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, expected = setup_app(database, tmp_path, pk_type, monkeypatch)
    pk = PK_TYPES[pk_type][1]
    app.cli("init", check=True)
    report = json.loads(app.cli("encrypt-existing", "--json", check=True).stdout)
    assert report["encrypted"] == sum(1 for v in expected.values() if v)
    assert read_back(database, pk) == expected
    before = database.rows("SELECT * FROM creds")
    proc = app.cli("rotate", "--yes", "--json", check=True)
    rotated = json.loads(proc.stdout)
    assert rotated["new_version"] == 2 and rotated["failed"] == 0
    assert rotated["rotated"] == report["encrypted"]
    assert read_back(database, pk) == expected
    heads = {
        v.split(":")[1]
        for row in database.rows("SELECT api_key, oauth FROM creds")
        for v in row
        if v
    }
    assert heads == {"2"}
    assert_no_secret(proc.stdout + proc.stderr, *[v for v in expected.values() if v])
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    assert {c["column"]: c["by_version"] for c in status["columns"]} == {
        "creds.api_key": {"2": sum(1 for k, v in expected.items() if v and k[-1] == "api_key")},
        "creds.oauth": {"2": 40},
    }
    app.cli("restore", rotated["job"], "--yes", check=True)
    assert sorted(database.rows("SELECT * FROM creds"), key=repr) == sorted(before, key=repr)
    atomic = json.loads(app.cli("rotate", "--yes", "--atomic", "--json", check=True).stdout)
    assert atomic["new_version"] == 3 and read_back(database, pk) == expected


def test_wrong_kek_and_dry_run_change_nothing(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    before = snapshot(database)
    wrong = App(app.dir, dict(app.env, KEYTURN_KEK=secrets.token_hex(32)))
    for command in (["rotate", "--yes"], ["encrypt-existing"], ["rotate-kek", "--yes"]):
        assert wrong.cli(*command).returncode in (2, 3)
    assert app.cli("rotate", "--dry-run", check=True).returncode == 0
    assert snapshot(database) == before


def test_a_walk_whose_lease_is_lost_stops_and_the_next_walk_goes_on(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's chunks share one writer (TableRewriter.queue). Another worker took
    this chunk over (LeaseLost from its checkpoint, which rolls that batch back): no
    batch of it is written after, its end reports None, and the next chunk's walk on
    the same writer runs to its end."""
    from keyturn.engine.pacing import Pacing, Pipeline
    from keyturn.engine.walk import ColumnResult, TableRewriter, each_value, pipelined
    from keyturn.errors import LeaseLost

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    with keyturn.open() as store:
        oauth = oauth_column(store)
        checkpoints: list[Any] = []

        def on_batch(conn: Any, last: Any, counts: Any, applied: Any) -> None:
            checkpoints.append(last)
            if len(checkpoints) == 2:
                raise LeaseLost("chunk 0 is leased by another worker")

        def walk(until: int | None, hook: Any) -> TableRewriter:
            return TableRewriter(
                store.engine,
                [oauth],
                [each_value(lambda pk, value: ("seen", f"{value}|w"))],
                pacing=Pacing(batch_size=5, max_batch=5),
                on_batch=hook,
                until=(until,) if until else None,
            )

        ended: list[list[ColumnResult] | None] = []
        with Pipeline(pipelined(store.engine)) as pipeline:
            walk(20, on_batch).queue(pipeline, ended.append)
            walk(None, None).queue(pipeline, ended.append, after=(20,))
    assert ended[0] is None and ended[1] is not None
    assert ended[1][0].counts == {"seen": 20}
    rows = dict(database.rows("SELECT id, oauth FROM creds"))
    assert [i for i in range(1, 41) if rows[i].endswith("|w")] == [*range(1, 6), *range(21, 41)]


def test_compare_and_swap_is_exact(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app write differing only in case or trailing space is never overwritten
    (MySQL/MariaDB collations would call the two equal). On MariaDB the walk's
    batches lock their rows instead; the compare is what its retries and sweeps
    run, tested here with the locks off."""
    from keyturn.engine import dialects
    from keyturn.engine.walk import TableRewriter, each_value

    monkeypatch.setattr(dialects, "LOCKED_READS", ())
    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    database.execute("UPDATE creds SET oauth = 'Secret' WHERE id = 1")
    database.execute("UPDATE creds SET oauth = 'tail' WHERE id = 2")
    with keyturn.open() as store:
        oauth = oauth_column(store)
        changed: dict[int, str] = {1: "secret", 2: "tail "}

        def decide(pk: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if pk[0] in changed and value != changed[pk[0]]:
                # The app rewrites the value between our read and our write.
                database.execute(
                    "UPDATE creds SET oauth = :v WHERE id = :i", v=changed[pk[0]], i=pk[0]
                )
            return "seen", f"{value}|rewritten"

        TableRewriter(store.engine, [oauth], [each_value(decide)]).run()
    rows = dict(database.rows("SELECT id, oauth FROM creds WHERE id IN (1, 2)"))
    assert rows == {1: "secret|rewritten", 2: "tail |rewritten"}


@pytest.mark.parametrize("rows_as", ["values", "selects"])
@pytest.mark.parametrize("pk_type", list(PK_TYPES))
def test_bulk_swap_never_resurrects_or_overwrites(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pk_type: str,
    rows_as: str,
) -> None:
    """The compare-and-swap write path on each backend (MariaDB: many rows per UPDATE): a row
    the app changed between our read and our write is retried from its new value,
    a row it deleted is never brought back, and every other row is swapped once.
    On MariaDB both ways of sending the rows: a VALUES list, and SELECT … UNION ALL
    (what MySQL gets), with the walk's row locks off (the compare is what its
    retries and sweeps run; test_a_locked_batch_holds_off_the_app for the locks)."""
    from keyturn.engine import dialects
    from keyturn.engine.walk import TableRewriter, each_value

    monkeypatch.setattr(dialects, "LOCKED_READS", ())
    if rows_as == "selects":
        if database.kind != "mysql":
            pytest.skip("only MariaDB/MySQL has two ways to send the rows")
        monkeypatch.setattr(TableRewriter, "values_rows", False)

    pk, keys, changed, deleted, where = rows_the_app_touches(
        database, tmp_path, pk_type, monkeypatch
    )
    params = {f"k{j}": v for j, v in enumerate(changed)}
    gone = {f"k{j}": v for j, v in enumerate(deleted)}
    with keyturn.open() as store:
        oauth = oauth_column(store)

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if tuple(key) == changed and value != "app-wrote":
                database.execute(f"UPDATE creds SET oauth = 'app-wrote' WHERE {where}", **params)
                database.execute(f"DELETE FROM creds WHERE {where.replace(':k', ':g')}",
                                 **{k.replace("k", "g"): v for k, v in gone.items()})  # fmt: skip
            return "seen", f"{value}|rewritten"

        results, prepared = run_spied(
            monkeypatch, TableRewriter(store.engine, [oauth], [each_value(decide)])
        )
    if database.kind == "postgresql":  # the arrays path, not the driver's executemany
        batches = [write for write in prepared if len(write.rows) > 1]
        assert batches and not any(write.many for write in batches)
    rows = oauth_by_key(database, pk)
    assert deleted not in rows, "a row deleted meanwhile was brought back"
    assert rows.pop(changed) == "app-wrote|rewritten", "the app's write was overwritten"
    assert all(v.endswith("|rewritten") and v.count("|") == 1 for v in rows.values())
    assert len(rows) == len(keys) - 2
    assert results[0].counts.get("contended", 0) == 0


@pytest.mark.parametrize("database", ["mysql"], indirect=True)
@pytest.mark.parametrize(("pk_type", "binlog"), [("int", "mixed"), ("composite", "statement")])
def test_a_locked_batch_holds_off_the_app(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pk_type: str, binlog: str
) -> None:
    """MariaDB: a batch's rows are locked from its read to its commit, and its swap
    sends no values read. An app write to one of them waits for the batch, then
    lands: it is never overwritten, a row it deletes is never brought back, and
    nothing misses or is retried. Under READ COMMITTED, or, where the server logs
    statements (which InnoDB refuses to write under it), the session's level."""
    import threading

    from keyturn.engine.dialects import mysql
    from keyturn.engine.walk import TableRewriter, each_value

    if binlog == "statement":
        monkeypatch.setattr(mysql, "logs_statements", lambda conn: True)
    levels: list[str] = []
    read_locked = TableRewriter._read_locked

    def spy(self: Any, query: Any) -> Any:
        rows, held = read_locked(self, query)
        cursor = held.conn.connection.dbapi_connection.cursor()
        cursor.execute(
            "SELECT trx_isolation_level FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id = CONNECTION_ID()"
        )
        levels.append(cursor.fetchone()[0])
        return rows, held

    monkeypatch.setattr(TableRewriter, "_read_locked", spy)

    pk, keys, changed, deleted, where = rows_the_app_touches(
        database, tmp_path, pk_type, monkeypatch
    )
    app_writes: list[threading.Thread] = []
    waited: list[bool] = []

    def app_write() -> None:
        database.execute(
            f"UPDATE creds SET oauth = 'app-wrote' WHERE {where}",
            f"DELETE FROM creds WHERE {where.replace(':k', ':g')}",
            **{f"k{j}": v for j, v in enumerate(changed)},
            **{f"g{j}": v for j, v in enumerate(deleted)},
        )

    with keyturn.open() as store:
        oauth = oauth_column(store)

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if tuple(key) == changed and not app_writes:
                app_writes.append(threading.Thread(target=app_write))
                app_writes[0].start()
                app_writes[0].join(1.0)
                waited.append(app_writes[0].is_alive())
            return "seen", f"{value}|rewritten"

        results, prepared = run_spied(
            monkeypatch, TableRewriter(store.engine, [oauth], [each_value(decide)])
        )
        app_writes[0].join(30)
    assert waited == [True], "the app wrote a row of a batch between its read and its write"
    level = "REPEATABLE READ" if binlog == "statement" else "READ COMMITTED"
    assert levels and set(levels) == {level}
    assert prepared and all("AS o0" not in sql for w in prepared for sql, _ in w.statements)
    rows = oauth_by_key(database, pk)
    assert deleted not in rows, "a row deleted after the batch was brought back"
    assert rows.pop(changed) == "app-wrote", "the app's later write was overwritten"
    assert all(v.endswith("|rewritten") and v.count("|") == 1 for v in rows.values())
    assert len(rows) == len(keys) - 2
    assert results[0].counts == {"seen": len(keys)}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_sqlite_batch_no_one_wrote_to_since_its_read_is_swapped_by_key(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a batch is swapped by its key alone when no other connection has
    committed since its read (the database's data_version is as it was then);
    the batch the app wrote to in between is compared, its swap misses the row
    the app changed, and the retry keeps the app's value and brings back no row
    it deleted."""
    from keyturn.engine.pacing import Pacing
    from keyturn.engine.walk import TableRewriter, each_value

    pk, keys, changed, deleted, where = rows_the_app_touches(database, tmp_path, "int", monkeypatch)
    with keyturn.open() as store:

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if tuple(key) == changed and value != "app-wrote":
                database.execute(
                    f"UPDATE creds SET oauth = 'app-wrote' WHERE {where}",
                    f"DELETE FROM creds WHERE {where.replace(':k', ':g')}",
                    k0=changed[0],
                    g0=deleted[0],
                )
            return "seen", f"{value}|rewritten"

        pacing = Pacing(batch_size=5, min_batch=5, max_batch=5)
        rewriter = TableRewriter(
            store.engine, [oauth_column(store)], [each_value(decide)], pacing=pacing
        )
        sent: list[str] = []
        write = rewriter._write
        monkeypatch.setattr(
            rewriter, "_write", lambda conn, w: sent.append(w.statements[0][0]) or write(conn, w)
        )
        results = rewriter.run()
    compared = [sql for sql in sent if "creds.oauth = ?" in sql]
    assert len(sent) == len(keys) // 5 + 1  # every batch, and the retry
    assert len(compared) == 2, "the batch the app wrote to, and its retry, compare; no other"
    rows = oauth_by_key(database, pk)
    assert deleted not in rows, "a row deleted meanwhile was brought back"
    assert rows.pop(changed) == "app-wrote|rewritten", "the app's write was overwritten"
    assert all(v.endswith("|rewritten") and v.count("|") == 1 for v in rows.values())
    assert results[0].counts.get("contended", 0) == 0


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_postgresql_swap_compares_the_rows_xmin(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a bulk swap carries each row's xmin as read, not its tokens. A row
    the app wrote after our read, even in a column we do not change, misses and is
    retried from what is there now: the app's write stays, ours lands once."""
    from keyturn.engine.walk import TableRewriter, each_value

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    with keyturn.open() as store:
        oauth = oauth_column(store)

        wrote: list[bool] = []

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if key == (5,) and not wrote:
                wrote.append(True)
                database.execute("UPDATE creds SET api_key = 'app-wrote' WHERE id = 5")
                database.execute("UPDATE creds SET oauth = oauth || '!' WHERE id = 6")
            return "seen", f"{value}|rewritten"

        results, prepared = run_spied(
            monkeypatch, TableRewriter(store.engine, [oauth], [each_value(decide)])
        )
    statements = [sql for w in prepared if len(w.rows) > 1 for sql, _ in w.statements]
    assert statements and all("t.xmin = v.x" in s and "AS v(k0, x, n0)" in s for s in statements)
    rows = {i: (a, o) for i, a, o in database.rows("SELECT id, api_key, oauth FROM creds")}
    assert rows.pop(5) == ("app-wrote", "ya29.token-5|rewritten")
    assert rows.pop(6)[1] == "ya29.token-6!|rewritten"
    assert all(o == f"ya29.token-{i}|rewritten" for i, (_, o) in rows.items())
    assert results[0].counts == {"seen": 40}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("rows", "chars"), [(7, 1_000_000), (1_000, 300), (1_000, 10)])
def test_a_postgresql_batch_too_long_for_one_swap_is_split(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    chars: int,
) -> None:
    """A batch over ARRAY_ROWS rows or ARRAY_CHARS characters of arrays is swapped
    in several statements, each within both where one row allows; every row lands
    once. (The usual batch is built as one statement first.)"""
    from keyturn.engine.dialects import postgresql
    from keyturn.engine.pacing import Pacing

    monkeypatch.setattr(postgresql, "ARRAY_ROWS", rows)
    monkeypatch.setattr(postgresql, "ARRAY_CHARS", chars)
    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    with keyturn.open() as store:
        results, prepared = rewrite_oauth(monkeypatch, store, Pacing(batch_size=40))
    (write,) = [w for w in prepared if len(w.rows) > 1]
    per_statement = [params[0].count(",") + 1 for _, params in write.statements]  # keys
    assert sum(per_statement) == 40 and max(per_statement) <= rows
    if chars == 10:  # no two rows fit: one statement each
        assert per_statement == [1] * 40
    else:
        assert 1 < len(per_statement) < 40
    oauth = {i: o for i, o in database.rows("SELECT id, oauth FROM creds")}
    assert oauth == {i: f"ya29.token-{i}|rewritten" for i in range(1, 41)}
    assert results[0].counts == {"seen": 40}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_row_moved_between_read_and_swap_gets_its_own_value(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: CLUSTER (as VACUUM FULL) between our read and our swap moves
    every row and keeps its xmin. With the rows all written by one transaction and
    put in reverse order, each row now sits where another was read, with the xmin
    read: the swap finds each row by its primary key, so every row gets its own
    value (never another row's), at once, since none changed."""
    from keyturn.engine.walk import TableRewriter, each_value

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    database.execute(  # one xmin for every row, at ctids in key order
        "CREATE TABLE saved AS SELECT * FROM creds ORDER BY id",
        "TRUNCATE creds",
        "INSERT INTO creds SELECT * FROM saved ORDER BY id",
        "DROP TABLE saved",
        "CREATE INDEX creds_backwards ON creds (id DESC)",
    )
    app.cli("init", check=True)
    with keyturn.open() as store:
        oauth = oauth_column(store)
        moved: list[bool] = []

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if not moved:
                moved.append(True)
                outside_a_transaction(database, "CLUSTER creds USING creds_backwards")
            return "seen", f"{value}|rewritten"

        results, prepared = run_spied(
            monkeypatch, TableRewriter(store.engine, [oauth], [each_value(decide)])
        )
    assert [len(w.rows) for w in prepared] == [40], "a moved row's swap missed"
    rows = {i: o for i, o in database.rows("SELECT id, oauth FROM creds")}
    assert rows == {i: f"ya29.token-{i}|rewritten" for i in range(1, 41)}
    assert results[0].counts == {"seen": 40}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_table_renamed_in_place_between_read_and_swap_is_left_alone(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a copy of the table, made before our read, renamed in its place
    between our read and our swap, holds the same keys at the same places. Its
    rows were written by other transactions than the rows read: the swap, which
    compares each row's xmin, misses every row of the copy and retries it there.
    The copy keeps its own values, each re-encrypted once; the table read keeps
    what it held. (A swap that found rows by their ctid and an xmin horizon alone
    would write the table read's values into the copy.)"""
    from keyturn.engine.walk import TableRewriter, each_value

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    database.execute(  # in key order from the first place of the first page
        "CREATE TABLE saved AS SELECT * FROM creds ORDER BY id",
        "TRUNCATE creds",
        "INSERT INTO creds SELECT * FROM saved ORDER BY id",
        "DROP TABLE saved",
    )
    database.execute(  # the same places, written by another transaction
        "CREATE TABLE copied AS SELECT id, api_key, oauth || '-copy' AS oauth FROM creds "
        "ORDER BY id"
    )
    assert database.rows("SELECT ctid FROM copied ORDER BY id") == database.rows(
        "SELECT ctid FROM creds ORDER BY id"
    )
    with keyturn.open() as store:
        swapped: list[bool] = []

        def decide(key: tuple[Any, ...], value: Any) -> tuple[str, str | None]:
            if not swapped:
                swapped.append(True)
                database.execute(
                    "ALTER TABLE creds RENAME TO original", "ALTER TABLE copied RENAME TO creds"
                )
            return "seen", f"{value}|rewritten"

        results, prepared = run_spied(
            monkeypatch, TableRewriter(store.engine, [oauth_column(store)], [each_value(decide)])
        )
    assert [len(w.rows) for w in prepared] == [40, 40], "the copy's rows were swapped"
    rows = dict(database.rows("SELECT id, oauth FROM creds"))
    assert rows == {i: f"ya29.token-{i}-copy|rewritten" for i in range(1, 41)}
    original = dict(database.rows("SELECT id, oauth FROM original"))
    assert original == {i: f"ya29.token-{i}" for i in range(1, 41)}
    assert results[0].counts == {"seen": 40}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
@pytest.mark.parametrize("batch", [10, 200])
def test_a_partitioned_table_is_swapped_by_key_and_xmin(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """PostgreSQL: a partitioned table, in batches within one partition and in one
    batch across both: the swap finds each row by its key and compares its xmin.
    Every row ends with its own value, at once."""
    from keyturn.engine.pacing import Pacing

    database.execute(
        "CREATE TABLE creds (id INTEGER, api_key VARCHAR(255), oauth TEXT) PARTITION BY RANGE (id)",
        "CREATE TABLE creds_low PARTITION OF creds FOR VALUES FROM (1) TO (21)",
        "CREATE TABLE creds_high PARTITION OF creds FOR VALUES FROM (21) TO (41)",
    )
    app, _ = setup_app(database, tmp_path, "int", monkeypatch, create=False)
    app.cli("init", check=True)
    with keyturn.open() as store:
        results, prepared = rewrite_oauth(
            monkeypatch, store, Pacing(batch_size=batch, max_batch=batch)
        )
    forms = [re.findall(r" AS (v\(.*?\))", w.statements[0][0])[-1] for w in prepared]
    assert forms == ["v(k0, x, n0)"] * (4 if batch == 10 else 1)
    rows = dict(database.rows("SELECT id, oauth FROM creds"))
    assert rows == {i: f"ya29.token-{i}|rewritten" for i in range(1, 41)}
    assert results[0].counts == {"seen": 40}


def rows_the_app_touches(
    database: Database, tmp_path: Path, pk_type: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[tuple[Any, ...]], tuple[Any, ...], tuple[Any, ...], str]:
    """An initialized app (setup_app): its primary key's columns, its rows' keys, the
    row the app changes and the row it deletes, and one row's WHERE (``:k0``, …)."""
    app, expected = setup_app(database, tmp_path, pk_type, monkeypatch)
    app.cli("init", check=True)
    _, pk = PK_TYPES[pk_type]
    keys = sorted({k[:-1] for k in expected}, key=repr)
    where = " AND ".join(f"{c} = :k{j}" for j, c in enumerate(pk))
    return pk, keys, keys[4], keys[9], where


def run_spied(monkeypatch: pytest.MonkeyPatch, rewriter: Any) -> tuple[Any, list[Any]]:
    """Run a TableRewriter; its results, and every write it prepared."""
    prepared = spy_on(monkeypatch, rewriter, "_prepare")
    return rewriter.run(), prepared


def rewrite_oauth(
    monkeypatch: pytest.MonkeyPatch, store: Any, pacing: Any
) -> tuple[Any, list[Any]]:
    """Rewrite every ``creds.oauth`` value to ``<value>|rewritten`` (category
    "seen"), batched by ``pacing``; the results, and every write prepared."""
    from keyturn.engine.walk import TableRewriter, each_value

    rewriter = TableRewriter(
        store.engine,
        [oauth_column(store)],
        [each_value(lambda key, value: ("seen", f"{value}|rewritten"))],
        pacing=pacing,
    )
    return run_spied(monkeypatch, rewriter)


def outside_a_transaction(database: Database, statement: str) -> None:
    """Run a statement PostgreSQL refuses inside a transaction block (VACUUM) or
    that should commit on its own (CLUSTER)."""
    from sqlalchemy import create_engine

    engine = create_engine(database.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def oauth_column(store: Any) -> Any:
    """The bound ``creds.oauth`` column of a store opened on setup_app's config."""
    (oauth,) = [c for c in store.bound_columns() if c.spec.name == "creds.oauth"]
    return oauth


def oauth_by_key(database: Database, pk: list[str]) -> dict[tuple[Any, ...], Any]:
    """Each row of ``creds``: its oauth value by its primary key."""
    rows = database.rows(f"SELECT {', '.join(pk)}, oauth FROM creds")
    return {tuple(r[:-1]): r[-1] for r in rows}


def spy_on(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[Any]:
    """Record what ``obj.name(...)`` returns, calling through."""
    returned: list[Any] = []
    method = getattr(obj, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        returned.append(method(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(obj, name, spy)
    return returned


# Any text PostgreSQL stores (no NUL), and the array literal's special characters.
_PG_TEXT = st.sampled_from(["NULL", "null", "", " "]) | st.text(
    alphabet=st.sampled_from('",{}\\ \t\nNUL')
    | st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_postgresql_arrays_read_back_as_written(database: Database) -> None:
    """The PostgreSQL swap sends each column of its rows as one text (split by the
    server, or an array literal): each value, whatever it holds (commas, quotes,
    braces, backslashes, "NULL", empty, spaces), arrives unchanged."""
    from sqlalchemy import create_engine

    from keyturn.engine.dialects.postgresql import array_of as _pg_array

    engine = create_engine(database.url)
    forms = set()

    @settings(max_examples=300, deadline=None)
    @example(values=["kt1:1:AbC-_", "o'b\\r%s\"-ü"])  # split by the server
    @example(values=["a,b", ""])  # an array literal
    @given(
        values=st.lists(_PG_TEXT, min_size=1)
        | st.lists(st.uuids(), min_size=1)
        | st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1)
    )
    def round_trip(values: list[Any]) -> None:
        kind = {str: "text", int: "bigint"}.get(type(values[0]), "uuid")
        array = _pg_array(values, kind)
        assert array is not None
        sql, bound = array
        forms.add(sql.split("(")[0])
        with engine.connect() as conn:
            back = conn.exec_driver_sql(f"SELECT {sql}", (bound,)).scalar_one()
            assert back == values

    try:
        round_trip()
        assert forms == {"string_to_array", "%s::text[]", "%s::bigint[]", "%s::uuid[]"}
        assert _pg_array([1, "mixed"], "text") is None  # others: the driver's executemany
        assert _pg_array(["mixed", 1], "text") is None
        assert _pg_array(["a", None], "text") is None
        assert _pg_array([1.5], "numeric") is None
        xmins = ["3", "4294967295", "0"]  # as the driver reads them: digits only
        assert _pg_array(xmins, "xid") == ("%s::xid[]", "{3,4294967295,0}")
        assert _pg_array(["3", "4,5"], "xid") == ("%s::xid[]", '{"3","4,5"}')  # no split
        with engine.connect() as conn:
            sql, bound = _pg_array(xmins, "xid") or ("", "")
            back = conn.exec_driver_sql(f"SELECT ({sql})::text[]", (bound,)).scalar_one()
            assert back == xmins
    finally:
        engine.dispose()


def _kill_sessions(database: Database, name: str) -> int:
    """Kill every other session on the test database, as an operator or a failover would."""
    if database.kind == "postgresql":
        rows = database.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :d AND pid <> pg_backend_pid()",
            d=name,
        )
        return len(rows)
    ids = database.rows(
        "SELECT id FROM information_schema.processlist WHERE db = :d AND id <> CONNECTION_ID()",
        d=name,
    )
    for (session,) in ids:
        with contextlib.suppress(Exception):  # the session may have ended meanwhile
            database.execute(f"KILL {int(session)}")
    return len(ids)


@pytest.mark.parametrize("database", ["postgresql", "mysql"], indirect=True)
def test_connection_killed_mid_rotation(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    app, expected = setup_app(database, tmp_path, "int", monkeypatch)
    values = ", ".join(f"({i}, 'sk_bulk_{i}', 'tok_{i}')" for i in range(1000, 4000))
    database.execute(f"INSERT INTO creds (id, api_key, oauth) VALUES {values}")
    for i in range(1000, 4000):
        expected[(i, "api_key")] = f"sk_bulk_{i}"
        expected[(i, "oauth")] = f"tok_{i}"
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    name = database.url.rsplit("/", 1)[1]
    proc = app.start("rotate", "--yes", "--max-rate", "1500", "--chunk-time", "0.05")
    killed = 0
    for _ in range(4):
        time.sleep(0.7)
        if proc.poll() is not None:
            break
        killed += _kill_sessions(database, name)
    _, err = proc.communicate(timeout=120)
    assert killed, "no session was killed while the rotation ran"
    if proc.returncode != 0:
        # A clear one-line error, nothing further written: the database error, or, if
        # the kill ended the keyring lock's own session first, the lost lock.
        lost = "keyturn: error: rotate stopped: the keyring lock was lost"
        if proc.returncode == 4:
            assert err.startswith(lost) and "Run it again to resume" in err, err
        else:
            assert proc.returncode == 1 and err.startswith("keyturn: database error:"), err
            assert "run `keyturn rotate` again to resume" in err
        assert err.strip().count("\n") == 0
    assert read_back(database, ["id"]) == expected  # nothing lost
    final = json.loads(app.cli("rotate", "--yes", "--json", check=True).stdout)
    heads = {
        v.split(":")[1]
        for row in database.rows("SELECT api_key, oauth FROM creds")
        for v in row
        if v
    }
    assert heads == {str(final["new_version"])}
    assert read_back(database, ["id"]) == expected


@pytest.mark.parametrize("database", ["postgresql", "mysql"], indirect=True)
def test_a_checkpoint_checks_the_lock_on_the_server(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's UPDATE carries the lock's condition, so a batch checks the lock
    without pinging the lock session: true while the session holds the lock, false
    (nothing written) once the server ended that session."""
    from sqlalchemy import select

    from keyturn.db import schema
    from keyturn.db.database import write_transaction
    from keyturn.db.locking import KeyringLock
    from keyturn.engine import jobs
    from keyturn.errors import KeyringBusy

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    with keyturn.open() as store:
        lock = KeyringLock(store.engine, "rotate").acquire()
        try:
            with write_transaction(store.engine) as conn:
                job = jobs.create(conn, "rotate", 2, "test", {})
            guard = lock.guard()
            assert guard is not None
            for _ in range(2):  # the same progress twice: still a row written (found rows)
                with write_transaction(store.engine) as conn:
                    assert jobs.checkpoint(conn, job.id, {"n": 1}, guard)
            session = lock._session_id
            if database.kind == "postgresql":
                database.rows(f"SELECT pg_terminate_backend({int(session)})")  # type: ignore[arg-type]
            else:
                database.execute(f"KILL {int(session)}")  # type: ignore[arg-type]
            with write_transaction(store.engine) as conn:
                assert not jobs.checkpoint(conn, job.id, {"n": 2}, guard)
                with pytest.raises(KeyringBusy, match="the keyring lock was lost"):
                    lock.verify(conn)
            with store.engine.connect() as conn:
                progress = conn.execute(
                    select(schema.jobs.c.progress).where(schema.jobs.c.id == job.id)
                ).scalar()
            assert json.loads(progress) == {"n": 1}
        finally:
            lock.release()


@pytest.mark.parametrize("database", ["postgresql", "mysql"], indirect=True)
def test_the_width_preflight_scans_only_when_tokens_can_grow(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-encrypted under v2..v9 a token keeps its length, and the server already holds
    it within the column's width: no scan. Under v10 (one character more) it scans."""
    from keyturn.ops import rotate

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    scans = spy_on(monkeypatch, rotate, "longest_token")
    with keyturn.open() as store:
        rotator = rotate.Rotator(store, rotate.RotateOptions(backup=False))
        rotator.preflight()
        assert scans == []
        (api_key,) = [c for c in store.bound_columns() if c.spec.name == "creds.api_key"]
        rotator._check_width(api_key, 10)
        assert len(scans) == 1


def test_long_values_are_swapped_in_statements_the_server_accepts(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 secrets of 40 KB: a MariaDB bulk swap of 1,000 such rows would be ~28 MB,
    over the server's 16 MiB max_allowed_packet; statements are cut by size too."""
    from sqlalchemy import create_engine, text

    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.write_config(
        f'database = "{database.url}"\n[[columns]]\ntable = "blobs"\ncolumn = "secret"\n'
    )
    database.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, secret TEXT)")
    secret = {i: f"{i}-" + secrets.token_urlsafe(30_000) for i in range(1, 301)}
    engine = create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO blobs VALUES (:i, :s)"), [{"i": i, "s": s} for i, s in secret.items()]
        )
    engine.dispose()
    app.cli("init", check=True)
    # Random text in base64's alphabet is shaped like ciphertext: said to be plaintext.
    app.cli("encrypt-existing", "--include-unknown", check=True)
    app.cli("rotate", "--yes", check=True)
    with keyturn.open(app.config) as store:
        rows = database.rows("SELECT id, secret FROM blobs")
        assert all(t.startswith("kt1:2:") for _, t in rows)
        assert {i: store.decrypt(t, context="blobs.secret") for i, t in rows} == secret


def test_status_counts_every_kind_of_value_by_its_header(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status counts in the database: tokens per version (v10 apart from v1), a version
    this keyring never had, a header with no payload or a bad version (plaintext),
    plaintext, NULL and '' — and reads no value into Python."""
    app, _ = setup_app(database, tmp_path, "int", monkeypatch)
    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    with keyturn.open() as store:
        v1 = store.encrypt("x", context="creds.oauth")
    weird = {
        1: v1.replace("kt1:1:", "kt1:10:"),  # a version never held: counted as v10
        2: "kt1:1:",  # a header with no payload: plaintext
        3: "kt1:01:" + v1[6:],  # not a canonical version: plaintext
        4: "kt1: spaced",  # plaintext
        5: None,
        6: "",
    }
    for i, value in weird.items():
        database.execute("UPDATE creds SET oauth = :v WHERE id = :i", v=value, i=i)
    status = json.loads(app.cli("status", "--json", check=True).stdout)
    oauth = next(c for c in status["columns"] if c["column"] == "creds.oauth")
    assert oauth["by_version"] == {"1": 34, "10": 1}
    assert (oauth["rows"], oauth["plaintext"], oauth["empty"]) == (40, 3, 2)


@pytest.mark.parametrize("database", ["postgresql", "mysql"], indirect=True)
def test_the_sweep_ahead_and_the_rest_catch_old_tokens(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One table on a server: the closing sweep reads the rows the walk passed while
    the walk's last batch is written, then the rest. An app process still sealing
    under v1 rewrites row 1 once the walk has passed it, and adds a row: both end
    on v2, row 1 counted as swept."""
    from parallel_app import ROWS, parallel_app

    from keyturn.engine.walk import TableRewriter
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = parallel_app(database, tmp_path, monkeypatch)
    stale = keyturn.open(app.config)  # opened before the rotation: seals under v1
    wrote: list[str] = []
    settle, queue = TableRewriter._settle, TableRewriter.queue
    sweeps_ahead: list[Any] = []

    def settle_then_write(self: TableRewriter, *args: Any) -> None:
        settle(self, *args)
        if self.where is None and not wrote:  # the walk's first batch is written
            wrote.append(stale.encrypt("sk_1-again", context="secrets.a"))
            wrote.append(stale.encrypt("sk_new", context="secrets.a"))
            database.execute(
                "UPDATE secrets SET a = :a WHERE id = 1",
                f"INSERT INTO secrets VALUES ({ROWS + 1}, :n, NULL)",
                a=wrote[0],
                n=wrote[1],
            )

    def spied_queue(self: TableRewriter, *args: Any, **kwargs: Any) -> None:
        if self.where is not None:
            sweeps_ahead.append(self.until)
        queue(self, *args, **kwargs)

    monkeypatch.setattr(TableRewriter, "_settle", settle_then_write)
    monkeypatch.setattr(TableRewriter, "queue", spied_queue)
    with keyturn.open(app.config) as store:
        report = Rotator(store, RotateOptions(backup=False, chunk_time=0.02)).run().to_dict()
    stale.close()
    assert all(w.startswith("kt1:1:") for w in wrote)
    assert len(sweeps_ahead) == 1 and sweeps_ahead[0] is not None, "no sweep ahead"
    tokens = ROWS + ROWS - ROWS // 10
    # Row 1 swept ahead; the new row walked, or swept with the rest if it came late.
    assert report["swept"] in (1, 2) and report["rotated"] + report["swept"] == tokens + 2
    with keyturn.open(app.config) as store:
        (a1,), (new,) = database.rows(
            f"SELECT a FROM secrets WHERE id IN (1, {ROWS + 1}) ORDER BY id"
        )
        assert a1.startswith("kt1:2:") and new.startswith("kt1:2:")
        assert store.decrypt(a1, context="secrets.a") == "sk_1-again"
        assert store.decrypt(new, context="secrets.a") == "sk_new"


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_the_sweep_scans_an_analyzed_table_rather_than_walk_its_key(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics taken before a rotation say every row holds an old token, so the
    planner would read the sweep's few matches by walking the whole primary key
    index in order (5x the server time of a scan and a sort, at 200,000 rows). The
    sweep over the rows the walk passed is planned without an index scan."""
    from parallel_app import parallel_app
    from sqlalchemy import create_engine

    from keyturn.engine.walk import TableRewriter
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = parallel_app(database, tmp_path, monkeypatch)
    database.execute("ANALYZE secrets")
    reads: list[tuple[Any, str | None]] = []
    rows = TableRewriter._rows

    def spied(self: TableRewriter, query: Any, conn: Any = None, setup: Any = None) -> Any:
        if self.where is not None and not self.key_order:
            reads.append((query, setup))
        return rows(self, query, conn, setup)

    monkeypatch.setattr(TableRewriter, "_rows", spied)
    with keyturn.open(app.config) as store:
        Rotator(store, RotateOptions(backup=False, chunk_time=0.02)).run()
    assert reads, "no sweep over the rows the walk passed"
    engine = create_engine(database.url)
    try:
        for query, setup in reads:
            compiled = query.compile(dialect=engine.dialect)
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute(setup)
                cursor.execute("EXPLAIN " + str(compiled), compiled.params)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "Index Scan" not in plan, plan
            finally:
                raw.rollback()
                raw.close()
    finally:
        engine.dispose()
