"""What the compare-and-swap costs the database server, statements alone.

Usage: .venv/bin/python bench/swap_statements.py [--rows 200000] [--per-statement 5000]
       [--backends postgresql,mysql] [--rounds 2] [--cpu] [--forms NAME,...] [--reads]

Rewrites ROWS random kt1-shaped tokens in a fresh table, PER_STATEMENT rows per
statement and a commit per statement, with no crypto and no reads: only the
write statements, so the forms can be compared as the server sees them.

  MariaDB      CAS (VALUES join, binary compare of the old token: keyturn's
               swap before it read each batch locked), the same carrying the
               old token but not comparing it, and the bare VALUES join (new
               token only: keyturn's now, in the transaction of the locked read).
  PostgreSQL   the key and each row's xmin as read, arrays each sent as one
               text, nested loops only (keyturn's); the same with a horizon
               instead of the xmins (``age(t.xmin) > age(h)``), and found by
               ctid with the key and the horizon, with the table too, by ctid
               with the key and xmin (a TID scan) or the xmin alone, or by
               ctid alone (the seventeenth session's swap, not kept); CAS with
               the tokens read (texts, executemany, lists, ``pk = ANY``); bare
               unnest (lists, and texts with nested loops) and bare VALUES
               joins. ``--cpu`` also prints the server backend's CPU seconds.

--forms keeps the forms whose names hold one of the words given.
--reads (PostgreSQL) times the walk's reads instead: the whole table read in
keyset batches of PER_STATEMENT rows: as a bare loop reads it (the key, the
token), as keyturn does (and the xmin), with the ctid too, and keyturn's read with
binary results; wall time, this process's CPU and the server backend's.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pymysql

from keyturn.engine.dialects.postgresql import INDEX_ORDER as _INDEX_ORDER
from keyturn.engine.dialects.postgresql import NESTED_LOOPS as _NESTED_LOOPS
from keyturn.engine.dialects.postgresql import NO_JIT as _NO_JIT
from keyturn.engine.dialects.postgresql import array_of as _pg_array

# A form: (cursor, tokens read, tokens to write, first row, end row, each row's
# xmin, ctid and table as read) -> rows swapped.
Form = Callable[[Any, list[str], list[str], int, int, list[tuple[str, str, int]]], int]


def tokens(version: int, n: int) -> list[str]:
    """Random strings shaped like kt1 tokens of a 30-byte secret."""
    return [
        f"kt1:{version}:" + base64.urlsafe_b64encode(os.urandom(58)).decode().rstrip("=")
        for _ in range(n)
    ]


def mariadb_values(cas: bool, compare: bool) -> Form:
    def run(cur: Any, olds: list[str], news: list[str], lo: int, hi: int, _: Any) -> int:
        if cas:
            first = f"SELECT {lo} AS k, '{olds[lo]}' AS o, '{news[lo]}' AS n"
            rows = ", ".join(f"({i}, '{olds[i]}', '{news[i]}')" for i in range(lo + 1, hi))
        else:
            first = f"SELECT {lo} AS k, '{news[lo]}' AS n"
            rows = ", ".join(f"({i}, '{news[i]}')" for i in range(lo + 1, hi))
        on = "t.id = v.k"
        if compare:
            on += " AND CAST(t.a AS BINARY) = CAST(v.o AS BINARY)"
        return int(
            cur.execute(
                f"UPDATE swap_bench AS t JOIN ({first} UNION ALL VALUES {rows}) AS v "
                f"ON {on} SET t.a = v.n"
            )
        )

    return run


def pg_executemany(cur: Any, olds: list[str], news: list[str], lo: int, hi: int, _: Any) -> int:
    cur.executemany(
        "UPDATE swap_bench SET a = %s WHERE id = %s AND a = %s",
        [(news[i], i, olds[i]) for i in range(lo, hi)],
    )
    return hi - lo  # executemany's rowcount is the last statement's


def pg_unnest(cas: bool, any_key: bool = False, texts: bool = False) -> Form:
    """``texts``: each array sent as one text, as keyturn sends them (ints as an
    array literal, tokens joined by commas and split by the server), and
    nested-loop joins only, as keyturn plans them."""

    def run(cur: Any, olds: list[str], news: list[str], lo: int, hi: int, _: Any) -> int:
        keys: Any = list(range(lo, hi))
        names = "k, o, n" if cas else "k, n"
        where = "t.id = v.k AND t.a = v.o" if cas else "t.id = v.k"
        params: list[Any] = [keys, olds[lo:hi], news[lo:hi]] if cas else [keys, news[lo:hi]]
        kinds = ["integer"] + ["text"] * (len(params) - 1)
        arrays = ", ".join(f"%s::{kind}[]" for kind in kinds)
        if texts:
            cur.execute(_NESTED_LOOPS)
            sent = [_pg_array(values, kind) for values, kind in zip(params, kinds, strict=True)]
            arrays = ", ".join(sql for sql, _ in filter(None, sent))
            params = [text for _, text in filter(None, sent)]
        if any_key:
            where = "t.id = ANY(%s::integer[]) AND " + where
            params.append(keys)
        cur.execute(
            f"UPDATE swap_bench AS t SET a = v.n FROM unnest({arrays}) AS v({names}) WHERE {where}",
            params,
        )
        return int(cur.rowcount)

    return run


def pg_by_version(by: str) -> Form:
    """The swap by what each row was read with: ``xmin`` (keyturn's: the key and
    each xmin), ``horizon`` (the key and one horizon), ``ctid`` (where it sits,
    its key and the horizon), ``ctid+table`` (and its table), ``ctid+key+xmin``
    (where it sits, found by a TID scan, then its key and xmin compared),
    ``ctid+xmin`` (no key), ``ctid only``. Given a key beside the ctid, the
    planner looks each row up by the key's index and only filters on the ctid
    (EXPLAIN): ``ctid+key+xmin`` turns index scans off to get the TID scan.
    Keys, xmins and tokens are sent as keyturn sends them (``array_of``)."""
    located = by.startswith("ctid")
    keyed = by not in ("ctid only", "ctid+xmin")
    by_xmin = by in ("xmin", "ctid+key+xmin", "ctid+xmin")
    where = (["t.ctid = v.c"] if located else []) + (["t.id = v.k"] if keyed else [])
    where += {
        "xmin": ["t.xmin = v.x"],
        "ctid+key+xmin": ["t.xmin = v.x"],
        "ctid+xmin": ["t.xmin = v.x"],
        "ctid+table": ["t.tableoid = %s::oid", AGE],
        "ctid only": [],
    }.get(by, [AGE])
    names = ["c"] * located + ["k"] * keyed + ["x"] * by_xmin + ["n"]

    def run(
        cur: Any,
        olds: list[str],
        news: list[str],
        lo: int,
        hi: int,
        seen: list[tuple[str, str, int]],
    ) -> int:
        cur.execute(_NESTED_LOOPS)
        if by == "ctid+key+xmin":
            cur.execute(_TID_SCAN)
        rows = seen[lo:hi]
        arrays: list[tuple[str, str] | None] = []
        if located:  # "(0,1)": quoted in the array literal
            arrays.append(("%s::tid[]", '{"' + '","'.join(c for _, c, _ in rows) + '"}'))
        if keyed:
            arrays.append(_pg_array(list(range(lo, hi)), "integer"))
        if by_xmin:
            arrays.append(_pg_array([x for x, _, _ in rows], "xid"))
        arrays.append(_pg_array(news[lo:hi], "text"))
        sent = [array for array in arrays if array is not None]
        params = [text for _, text in sent]
        if by == "ctid+table":
            params.append(rows[0][2])
        if AGE in where:  # taken here, after the rows were read (at fill)
            cur.execute(HORIZON_SQL)
            params.append(cur.fetchone()[0])
        cur.execute(
            f"UPDATE swap_bench AS t SET a = v.n FROM unnest({', '.join(sql for sql, _ in sent)}) "
            f"AS v({', '.join(names)}) WHERE {' AND '.join(where)}",
            params,
        )
        return int(cur.rowcount)

    return run


# For the rest of the transaction: no index, bitmap or sequential scans, so
# each row is fetched by its ctid and the key is a filter.
_TID_SCAN = (
    "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; "
    "SET LOCAL enable_seqscan = off"
)
HORIZON_SQL = "SELECT mod(txid_snapshot_xmin(txid_current_snapshot()), 4294967296)::text"
AGE = "age(t.xmin) > age(%s::xid)"


def pg_values(cur: Any, olds: list[str], news: list[str], lo: int, hi: int, _: Any) -> int:
    rows = ", ".join(["(%s::integer, %s::text)"] + ["(%s, %s)"] * (hi - lo - 1))
    cur.execute(
        f"UPDATE swap_bench AS t SET a = v.n FROM (VALUES {rows}) AS v(k, n) WHERE t.id = v.k",
        [x for i in range(lo, hi) for x in (i, news[i])],
    )
    return int(cur.rowcount)


def fill(kind: str, conn: Any, olds: list[str]) -> list[tuple[str, str, int]]:
    """A fresh table of the tokens read; on PostgreSQL each row's xmin, ctid and
    table as read."""
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS swap_bench")
        cur.execute("CREATE TABLE swap_bench (id INTEGER PRIMARY KEY, a VARCHAR(255))")
        mark = "%s"
        for start in range(0, len(olds), 10_000):
            cur.executemany(
                f"INSERT INTO swap_bench VALUES ({mark}, {mark})",
                [(i, olds[i]) for i in range(start, min(len(olds), start + 10_000))],
            )
    conn.commit()
    if kind != "postgresql":
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT xmin::text, ctid::text, tableoid FROM swap_bench ORDER BY id")
        seen = cur.fetchall()
    conn.commit()
    return seen


T = TypeVar("T")


def in_turn(listed: list[T], turn: int) -> list[T]:
    """``listed`` starting ``turn`` places later: a round's first run was seen to
    pay more (docs/PERFORMANCE.md), so each round starts with another."""
    start = turn % len(listed)
    return listed[start:] + listed[:start]


# --reads: the columns of each read, after the key; binary or text results.
READS = {
    "key, token (bare)": ("a", False),
    "key, token, xmin (keyturn)": ("a, xmin", False),
    "key, token, xmin, ctid": ("a, xmin, ctid", False),
    "key, token, xmin, binary": ("a, xmin", True),
}


def time_reads(conn: Any, rows: int, batch: int, rounds: int) -> None:
    """The whole table read in keyset batches with each of READS' column sets,
    in turn; best wall and client CPU, median server CPU."""
    fill("postgresql", conn, tokens(1, rows))
    backend = _backend(conn)
    spent: dict[str, list[tuple[float, float, float]]] = {name: [] for name in READS}
    listed = list(READS.items())
    for turn in range(rounds):
        for name, (columns, binary) in in_turn(listed, turn):
            used, cpu, started = _cpu(backend), time.process_time(), time.perf_counter()
            last, read = -1, 0
            while True:
                conn.execute(f"{_INDEX_ORDER}; {_NO_JIT}")
                with conn.cursor(binary=binary) as cur:
                    cur.execute(
                        f"SELECT id, {columns} FROM swap_bench WHERE id > %s ORDER BY id LIMIT %s",
                        (last, batch),
                    )
                    got = cur.fetchall()
                conn.commit()
                if not got:
                    break
                last, read = got[-1][0], read + len(got)
            assert read == rows, (name, read)
            spent[name].append(
                (time.perf_counter() - started, time.process_time() - cpu, _cpu(backend) - used)
            )
    with conn.cursor() as cur:
        cur.execute("DROP TABLE swap_bench")
    conn.commit()
    print(f"{rows} rows read, {batch} a read, best of {rounds} (server CPU: median)")
    for name, times in spent.items():
        wall, client = min(t[0] for t in times), min(t[1] for t in times)
        server = statistics.median(t[2] for t in times)
        line = f"postgresql  {name:<28} {wall:6.3f} s  client CPU {client:5.3f} s"
        print(f"{line}  server CPU {server:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--per-statement", type=int, default=5_000)
    parser.add_argument("--backends", default="postgresql,mysql")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many runs each")
    parser.add_argument("--cpu", action="store_true", help="PostgreSQL: the backend's CPU too")
    parser.add_argument(
        "--forms", default="", help="only the forms whose names hold one of these, comma-separated"
    )
    parser.add_argument(
        "--reads", action="store_true", help="PostgreSQL: time the walk's reads, not the swaps"
    )
    args = parser.parse_args()
    if args.reads:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
            time_reads(conn, args.rows, args.per_statement, args.rounds)
        return
    olds, news = tokens(1, args.rows), tokens(2, args.rows)
    forms: dict[str, dict[str, Form]] = {
        "mysql": {
            "CAS": mariadb_values(cas=True, compare=True),
            "old token carried, not compared": mariadb_values(cas=True, compare=False),
            "bare VALUES join (keyturn, locked)": mariadb_values(cas=False, compare=False),
        },
        "postgresql": {
            "xmin, texts (keyturn)": pg_by_version("xmin"),
            "ctid, key and xmin, TID scan": pg_by_version("ctid+key+xmin"),
            "ctid and xmin, no key": pg_by_version("ctid+xmin"),
            "key and horizon": pg_by_version("horizon"),
            "ctid, key and horizon": pg_by_version("ctid"),
            "ctid, table, key and horizon": pg_by_version("ctid+table"),
            "ctid only (unsafe)": pg_by_version("ctid only"),
            "CAS unnest, texts": pg_unnest(cas=True, texts=True),
            "CAS executemany": pg_executemany,
            "CAS unnest": pg_unnest(cas=True),
            "CAS unnest + pk = ANY": pg_unnest(cas=True, any_key=True),
            "bare unnest": pg_unnest(cas=False),
            "bare unnest, texts": pg_unnest(cas=False, texts=True),
            "bare VALUES join": pg_values,
        },
    }
    print(f"{args.rows} rows, {args.per_statement} per statement, best of {args.rounds}")
    for kind in args.backends.split(","):
        listed = list(forms[kind].items())
        if args.forms:
            wanted = args.forms.split(",")
            listed = [(name, form) for name, form in listed if any(w in name for w in wanted)]
        if not listed:
            print(f"{kind:<11} no form's name holds any of --forms {args.forms!r}: skipped")
            continue
        if kind == "mysql":
            conn: Any = pymysql.connect(host="127.0.0.1", user="root", database="test")
        else:
            conn = psycopg.connect("host=127.0.0.1 user=postgres dbname=test")
        times: dict[str, list[float]] = {name: [] for name, _ in listed}
        cpu: dict[str, list[float]] = {name: [] for name, _ in listed}
        backend = _backend(conn) if kind == "postgresql" else None
        for turn in range(args.rounds):
            for name, form in in_turn(listed, turn):
                seen = fill(kind, conn, olds)
                used = _cpu(backend)
                started = time.perf_counter()
                swapped = 0
                with conn.cursor() as cur:
                    for lo in range(0, args.rows, args.per_statement):
                        hi = min(args.rows, lo + args.per_statement)
                        swapped += form(cur, olds, news, lo, hi, seen)
                        conn.commit()
                times[name].append(time.perf_counter() - started)
                cpu[name].append(_cpu(backend) - used)
                assert swapped == args.rows, (name, swapped)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE swap_bench")
        conn.commit()
        conn.close()
        base = min(times[next(iter(times))])
        for name, measured in times.items():
            best = min(measured)
            line = f"{kind:<11} {name:<34} {best:6.2f} s  {best / base:5.2f}x of the first"
            if args.cpu and backend is not None:
                line += f"  server CPU {statistics.median(cpu[name]):5.2f} s (median)"
            print(line)


def _backend(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    conn.commit()
    return pid


def _cpu(pid: int | None) -> float:
    """CPU seconds a local server process has used (0 if unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
