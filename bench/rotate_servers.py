"""Rotation throughput on PostgreSQL and MariaDB, side by side with two baselines.

Usage: .venv/bin/python bench/rotate_servers.py [--rows 200000] [--backends postgresql,mysql]
       [--rounds 3] [--runs keyturn,(b)bare] [--cpu] [--phases] [--crypto]
       [--server-statements | --server-cpu] [--timeline]

For each backend, on identical fresh copies of a table of ROWS kt1 tokens:
  keyturn     `Rotator` (one worker): keyset walk, bulk swaps (PostgreSQL: by xmin;
              MariaDB: rows locked since their read), checkpoints, sweep
  2workers    the same with --workers 2 (leased chunks; one helper process)
  auto        the same with --workers auto (helpers only for the cores left idle)
  per-row     keyturn's engine with bulk writes off (driver executemany)
  (a) seeds   the seeds' script: SELECT all, then one UPDATE per row, one transaction
  (b) bare    the fastest bare loop with the same driver: keyset SELECT, AESGCM
              a batch at a time (rotate.reseal), one multi-row UPDATE per batch
              (no swap check, no checkpoint), the collector relaxed as keyturn's
              walk relaxes it
  (b) piped   the same with each UPDATE on a second connection in a thread while
              the next batch is read and re-encrypted, as keyturn does
  (b) ctid    PostgreSQL: (b) piped with each row updated where it was read (its
              ctid: a TID scan, no index lookup), 0-4% faster than (b) piped here
  (b) safe    (b) piped with keyturn's check that no row changed between its read
              and its swap, and nothing else of keyturn's: PostgreSQL compares each
              row's xmin; MariaDB reads each batch FOR UPDATE and swaps it in that
              transaction. What keyturn's safety alone costs the bare loop.
Goals: keyturn >= 5x (a) and >= 0.8x (b)bare (issue 5); one worker >= 0.9x
the fastest bare loop, (b)piped or (b)ctid (issue 23). Prints rows/s and ratios:
of the best rounds, and (with --rounds > 1) of each round's keyturn run against
that round's fastest bare loop.
--cpu also prints each run's CPU seconds, median of the rounds: this process's,
and the local server's (its processes' counters in /proc), which this noisy
2-core machine repeats far better than wall times.
--without checkpoints,sweep patches those steps out of keyturn's runs (unsafe;
to measure what they cost, never to rotate).
--server-statements (PostgreSQL) also prints what the server spent on each kind of
statement, from its log: each bench database logs every statement's duration
(log_min_duration_statement = 0, no parameters), read back from the server's log
file (Debian's /var/log/postgresql/postgresql-*-main.log, or $KEYTURN_BENCH_PG_LOG).
Durations include waiting on the client and on the other core, so they add up to
more than the server's CPU; the median of the rounds, per kind.
--timeline (PostgreSQL) prints, from the same log, when each run's swaps ran: the
time from the run's start to its first swap, the median interval between the
starts of consecutive full swaps (what a batch costs once the pipeline is full,
its commit, checkpoint and gaps included) and the median full swap, and the time
from the end of its last swap to the run's end. Full swaps: those at least half
as long as the upper quartile. Per-batch costs and fixed costs apart, each
repeats far better than the run's time.
--server-cpu (PostgreSQL) prints the server's CPU instead, from the same log:
each message's user and system time (log_statement_stats = on for each bench
database), per kind of statement, and each backend's whole CPU from its start
(the connection included) to its last statement. The logging itself costs the
server a getrusage and a log entry per message, in every run alike.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rotate import collector_relaxed, reseal  # bench/rotate.py: the bare loops' core
from sqlalchemy import create_engine, text

import keyturn
from keyturn._core.keyring import DataKey, Keyring
from keyturn.cli import cli
from keyturn.engine.dialects.mysql import READ_COMMITTED as _READ_COMMITTED
from keyturn.engine.dialects.postgresql import INDEX_ORDER as _INDEX_ORDER
from keyturn.engine.dialects.postgresql import NESTED_LOOPS as _NESTED_LOOPS
from keyturn.engine.walk import TableRewriter
from keyturn.ops.rotate import RotateOptions, Rotator, most_auto_workers

SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/",
}
ADMIN_DB = "test"
# Rows per bare-loop batch (one UPDATE each), so the baseline stays the fastest we
# found: on MariaDB 5,000 (1.84 s against 1.91 s with 2,000; 10,000 no faster);
# on PostgreSQL 20,000, read in index order (piped 2.50-2.67 s against
# 2.67-2.78 s with 5,000 rows, which the planner already reads by the index).
BATCH = {"postgresql": 20_000, "mysql": 5_000}
SERVER_PROCESS = {"postgresql": "postgres", "mysql": "mariadbd"}


def cpu_seconds(kind: str) -> tuple[float, float]:
    """CPU seconds used so far by this process and by the local server's processes
    (with the backends that have exited, counted in their parent's)."""
    mine = os.times()
    found = subprocess.run(["pgrep", "-x", SERVER_PROCESS[kind]], capture_output=True, text=True)
    ticks = 0
    for pid in found.stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a backend that ended meanwhile: in its parent's counters now
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return mine.user + mine.system, ticks / os.sysconf("SC_CLK_TCK")


# --server-statements: each statement's kind, by its text in the server's log.
STATEMENT_KINDS = (
    ("walk reads", re.compile(r"^SELECT .*\bFROM secrets\b(?!.* LIKE )", re.S)),
    ("sweep reads", re.compile(r"^SELECT .*\bFROM secrets\b.* LIKE ", re.S)),
    ("swaps", re.compile(r"^UPDATE secrets\b")),
    ("keyturn's tables", re.compile(r"\bkeyturn_\w+")),
    ("commits", re.compile(r"^COMMIT")),
)
_DURATION = re.compile(
    r"duration: ([0-9.]+) ms +(?:statement|parse [^:]*|bind [^:]*|execute [^:]*): (.*)", re.S
)
# --timeline: a swap's execution (not its parse or bind), and the entry's time.
_SWAP_RUN = re.compile(r"duration: ([0-9.]+) ms +(?:statement|execute [^:]*): UPDATE secrets\b")
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (\S+)")


def server_log() -> Path | None:
    """The local PostgreSQL server's log file, if this process can read it."""
    named = os.environ.get("KEYTURN_BENCH_PG_LOG")
    found = [Path(named)] if named else sorted(Path("/var/log/postgresql").glob("*-main.log"))
    return next((f for f in found if os.access(f, os.R_OK)), None)


# --server-cpu: each message's CPU (log_statement_stats), then, in a later entry of
# the same backend, the statement it ran; and the backend's CPU since it started.
_USAGE = re.compile(r"!\s+([0-9.]+) s user, ([0-9.]+) s system, ")
_TOTAL = re.compile(r"\[([0-9.]+) s user, ([0-9.]+) s system total\]")
_BACKEND = re.compile(r"\[(\d+)\] \S+@(\S+) ")
_STATEMENT = re.compile(r" STATEMENT:  (.*)", re.S)
BACKENDS = "backends in all"


def log_statements(name: str, cpu: bool = False) -> None:
    """Have the server log every statement of database ``name`` (without parameters):
    its duration, or with ``cpu`` the CPU it took (``log_statement_stats``)."""
    settings = ["log_statement_stats = on"] if cpu else ["log_min_duration_statement = 0"]
    admin = create_engine(SERVERS["postgresql"] + ADMIN_DB, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for setting in [*settings, "log_parameter_max_length = 0"]:
            conn.execute(text(f"ALTER DATABASE {name} SET {setting}"))
    admin.dispose()


def _kind(statement: str) -> str:
    return next((k for k, pattern in STATEMENT_KINDS if pattern.search(statement)), "other")


def log_entries(log: Path, offset: int, name: str) -> Iterator[tuple[re.Match[str], str]]:
    """Each entry of the log after ``offset`` written by a backend of database
    ``name``: that backend's match of _BACKEND (its pid, its database), the entry."""
    with log.open("rb") as f:
        f.seek(offset)
        written = f.read().decode(errors="replace")
    for entry in re.split(r"\n(?=\d{4}-\d\d-\d\d )", written):  # one log entry each
        backend = _BACKEND.search(entry)
        if backend is not None and backend[2] == name:
            yield backend, entry


def statement_ms(log: Path, offset: int, name: str, cpu: bool = False) -> dict[str, float]:
    """Milliseconds the server spent per kind of statement in database ``name``,
    from the log's text after ``offset``: durations, or with ``cpu`` CPU time (and
    the CPU of every backend of the database, from its start to its last message)."""
    spent = dict.fromkeys([kind for kind, _ in STATEMENT_KINDS] + ["other"], 0.0)
    pending: dict[str, float] = {}  # per backend, CPU not yet matched to its statement
    totals: dict[str, float] = {}
    for backend, entry in log_entries(log, offset, name):
        if not cpu:
            found = _DURATION.search(entry)
            if found is not None:
                spent[_kind(found[2])] += float(found[1])
            continue
        used, total = _USAGE.search(entry), _TOTAL.search(entry)
        if used is not None and total is not None:
            pid = backend[1]
            pending[pid] = pending.get(pid, 0.0) + 1000 * (float(used[1]) + float(used[2]))
            totals[pid] = 1000 * (float(total[1]) + float(total[2]))
        elif (statement := _STATEMENT.search(entry)) and backend[1] in pending:
            spent[_kind(statement[1])] += pending.pop(backend[1])
    if cpu:
        spent[BACKENDS] = sum(totals.values())
    return spent


def swap_times(log: Path, offset: int, name: str) -> list[tuple[float, float]]:
    """Each swap of database ``name`` in the log after ``offset``: when it started
    (seconds since the epoch) and how long it ran (seconds). An entry is stamped
    when the statement ends, to the millisecond."""
    swaps = []
    for _, entry in log_entries(log, offset, name):
        ran, stamp = _SWAP_RUN.search(entry), _STAMP.match(entry)
        if ran is None or stamp is None:
            continue
        ended = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S.%f")
        if stamp[2] == "UTC":
            ended = ended.replace(tzinfo=UTC)
        seconds = float(ran[1]) / 1000
        swaps.append((ended.timestamp() - seconds, seconds))
    return sorted(swaps)


def timeline(swaps: list[tuple[float, float]], started: float, ended: float) -> dict[str, float]:
    """--timeline's figures for one run, in milliseconds (see the module's doc)."""
    if not swaps:
        return {}
    quartile = sorted(took for _, took in swaps)[(3 * len(swaps)) // 4]
    full = [(at, took) for at, took in swaps if took >= quartile / 2]
    gaps = [b[0] - a[0] for a, b in pairwise(full)]
    last_start, last_took = swaps[-1]
    return {
        "to first swap": 1000 * (swaps[0][0] - started),
        "per full batch": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "full swap": 1000 * statistics.median(took for _, took in full),
        "after last swap": 1000 * (ended - last_start - last_took),
        "swaps": len(swaps),
    }


def make_db(kind: str) -> str:
    name = "ktbench_" + secrets.token_hex(4)
    admin = create_engine(SERVERS[kind] + ADMIN_DB, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return name


def drop_db(kind: str, name: str) -> None:
    admin = create_engine(SERVERS[kind] + ADMIN_DB, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        force = " WITH (FORCE)" if kind == "postgresql" else ""
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
    admin.dispose()


def build(kind: str, rows: int, workdir: Path) -> tuple[str, Path]:
    """A fresh database with ``rows`` v1 tokens, its keyturn.toml, initialized."""
    name = make_db(kind)
    url = SERVERS[kind] + name
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE secrets (id INTEGER PRIMARY KEY, a VARCHAR(255))"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "keyturn.toml"
    config.write_text(
        f'database = "{url}"\n[[columns]]\ntable = "secrets"\ncolumn = "a"\nprimary_key = "id"\n'
    )
    cli.main(["--config", str(config), "init"], standalone_mode=False)
    with keyturn.open(config) as store, engine.begin() as conn:
        for start in range(1, rows + 1, 10_000):
            batch = [
                {
                    "i": i,
                    "a": store.encrypt(f"secret-{i}-{os.urandom(6).hex()}", context="secrets.a"),
                }
                for i in range(start, min(rows, start + 9_999) + 1)
            ]
            conn.execute(text("INSERT INTO secrets VALUES (:i, :a)"), batch)
    engine.dispose()
    settle(kind, url)
    return name, config


def settle(kind: str, url: str) -> None:
    """PostgreSQL: the new table vacuumed and analyzed, as an app's table long in use
    is, and its pages written out, so no run pays for the build: the first read of
    each fresh row (its hint bits written) or a checkpoint the build's WAL started."""
    if kind != "postgresql":
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM (ANALYZE) secrets"))
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


# --phases: where one worker's time goes, summed per step over a run.
PHASES = (
    (Rotator, "preflight", "preflight (width, sample)"),
    (Rotator, "_start", "mint the version and job"),
    (TableRewriter, "_read_after", "reads (main thread)"),
    (TableRewriter, "_decide", "re-encrypt, prepare (main)"),
    (TableRewriter, "_write", "swap statements (writer)"),
    (Rotator, "_checkpoint", "checkpoints (writer)"),
)


def run_keyturn(
    config: Path,
    bulk: bool,
    workers: int = 1,
    auto: bool = False,
    phases: bool = False,
    without: frozenset[str] = frozenset(),
) -> float:
    TableRewriter.bulk = bulk
    options = RotateOptions(backup=False, chunk_time=0.5, workers=workers, auto_workers=auto)
    spent: dict[str, list[float]] = {label: [] for _, _, label in PHASES}
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PHASES]
    originals += [(owner, name, getattr(owner, name)) for _, owner, name, _ in WITHOUT]
    for step, owner, name, patch in WITHOUT:
        if step in without:
            setattr(owner, name, patch(getattr(owner, name)))
    for owner, name, label in PHASES if phases else ():
        setattr(owner, name, _timed(getattr(owner, name), spent[label]))
    try:
        with keyturn.open(config) as store:
            started = time.perf_counter()
            Rotator(store, options).run()
            took = time.perf_counter() - started
    finally:
        TableRewriter.bulk = True
        for owner, name, method in originals:
            setattr(owner, name, method)
    for label, times in spent.items() if phases else ():
        print(f"    {label:<27} {sum(times):6.3f} s in {len(times)} call(s)")
    return took


def _no_sweep_run(method: Any) -> Any:
    """TableRewriter.run, doing nothing for a closing sweep (``where``)."""

    def run(self: TableRewriter, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.where is None else []

    return run


def _no_sweep_queue(method: Any) -> Any:
    """TableRewriter.queue, handing a closing sweep's ``then`` no results at once."""

    def queue(self: TableRewriter, pipeline: Any, then: Any, *args: Any, **kwargs: Any) -> None:
        if self.where is None:
            method(self, pipeline, then, *args, **kwargs)
        else:
            pipeline.then(lambda: then([]))

    return queue


# --without: steps patched out of keyturn's runs, to measure what they cost.
WITHOUT = (
    ("checkpoints", Rotator, "_checkpoint", lambda method: lambda *args, **kwargs: None),
    ("sweep", TableRewriter, "run", _no_sweep_run),
    ("sweep", TableRewriter, "queue", _no_sweep_queue),
)


def _timed(method: Any, into: list[float]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return timed


def _keys(config: Path) -> tuple[Any, AESGCM, str]:
    with keyturn.open(config) as store:
        ring = store.keyring
        old = ring._keys[ring.active_version]  # the bench reads the raw DEK on purpose
        return store.config.database, AESGCM(old.key), f"kt1:{ring.active_version}:"


def run_seeds_script(config: Path) -> float:
    """(a) SELECT everything, then one UPDATE per row inside one transaction."""
    url, aead, _ = _keys(config)
    new = AESGCM(AESGCM.generate_key(256))
    engine = create_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, a FROM secrets")).all()
        for pk, token in rows:
            plain = _open(aead, token)
            conn.execute(
                text("UPDATE secrets SET a = :a WHERE id = :i"), {"a": _seal(new, plain), "i": pk}
            )
    engine.dispose()
    return time.perf_counter() - started


def run_bare_bulk(
    config: Path, kind: str, pipelined: bool = False, by_ctid: bool = False, safe: bool = False
) -> float:
    """(b) keyset SELECT, AESGCM, one multi-row UPDATE per batch; nothing else.
    ``pipelined``: each UPDATE runs on a second connection, in a thread, while the
    next batch is read and re-encrypted (as keyturn does on a server).
    ``safe`` (pipelined): with keyturn's check that no row changed between its read
    and its swap, and nothing else of keyturn's: on PostgreSQL each row read with
    its xmin and the swap comparing it; on MariaDB each batch read FOR UPDATE in a
    READ COMMITTED transaction that the batch's swap commits, on that connection
    (the two connections take turns).
    PyMySQL is told not to try TLS, which the local server does not offer: it would
    build a TLS context for each connection, 21-35 ms each (keyturn builds none for
    such a server: db/pymysql_tls.py)."""
    url, aead, _ = _keys(config)
    new = AESGCM(AESGCM.generate_key(256))
    engine = create_engine(url, connect_args={"ssl_disabled": True} if kind == "mysql" else {})
    started = time.perf_counter()
    last = 0
    with collector_relaxed(), engine.connect() as reader, engine.connect() as writer:
        read = reader.connection.dbapi_connection
        write = writer.connection.dbapi_connection
        assert read is not None and write is not None

        def update(conn: Any, sql: str, params: list[Any] | None, rows: int) -> None:
            if kind == "postgresql":
                conn.cursor().execute(_NESTED_LOOPS)
            cursor = conn.cursor()
            cursor.execute(sql, params)
            assert cursor.rowcount == rows, "a bare loop left rows alone"
            conn.commit()

        locked = safe and kind == "mysql"
        pool = ThreadPoolExecutor(1) if pipelined else None
        pending: Future[None] | None = None
        while True:
            cur = read.cursor()
            if kind == "postgresql":
                cur.execute(_INDEX_ORDER)
            if locked:
                cur.execute(_READ_COMMITTED)
            located = ", ctid::text" if by_ctid else ", xmin" if safe and not locked else ""
            cur.execute(
                f"SELECT id, a{located} FROM secrets WHERE id > %s ORDER BY id LIMIT %s"
                + (" FOR UPDATE" if locked else ""),
                (last, BATCH[kind]),
            )
            batch = cur.fetchall()
            if not locked:
                read.commit()
            if not batch:
                break
            last = batch[-1][0]
            params: list[Any] = []
            fresh = reseal(aead, new, [row[1] for row in batch], "secrets.a", 9)
            for row, token in zip(batch, fresh, strict=True):
                params += [row[2] if by_ctid else row[0], token]
            if kind == "postgresql":
                # Arrays joined with unnest, sent as one text each (ints as an
                # array literal, tokens joined by commas and split by the server;
                # psycopg adapts a list element by element, far slower), and joined
                # by nested loops (the planner hashes the whole table). 200,000
                # rows, piped: 2.47-2.65 s, against 3.85 s with the planner's join
                # and 5.64 s with lists (bench/swap_statements.py: statements alone).
                sql = (
                    "UPDATE secrets AS t SET a = v.a FROM unnest(%s::integer[], "
                    "string_to_array(%s, ',')) AS v(id, a) WHERE t.id = v.id"
                )
                if by_ctid:  # each row where it was read: a TID scan, no index lookup
                    sql = (
                        "UPDATE secrets AS t SET a = v.a FROM unnest(%s::tid[], "
                        "string_to_array(%s, ',')) AS v(c, a) WHERE t.ctid = v.c"
                    )
                if safe:  # only a row no one wrote since the read (keyturn's compare)
                    sql = (
                        "UPDATE secrets AS t SET a = v.a FROM unnest(%s::integer[], "
                        "%s::xid[], string_to_array(%s, ',')) AS v(id, x, a) "
                        "WHERE t.id = v.id AND t.xmin = v.x"
                    )
            else:
                # Literals rendered inline (ints, and tokens that need no escaping)
                # and rows as a VALUES list, as keyturn does on MariaDB: PyMySQL's
                # per-value escaping and a SELECT per row are the slow parts.
                pairs = list(zip(params[::2], params[1::2], strict=True))
                first = "SELECT {} AS id, '{}' AS a".format(*pairs[0])
                rest = ", ".join(f"({pk}, '{token}')" for pk, token in pairs[1:])
                values = first + (" UNION ALL VALUES " + rest if rest else "")
                sql = f"UPDATE secrets AS t JOIN ({values}) AS v ON t.id = v.id SET t.a = v.a"
            bound = None
            if kind == "postgresql":  # tokens hold no comma
                located = [f'"{c}"' for c in params[::2]] if by_ctid else map(str, params[::2])
                bound = ["{" + ",".join(located) + "}", ",".join(params[1::2])]
                if safe:
                    bound.insert(1, "{" + ",".join(str(row[2]) for row in batch) + "}")
            if pending is not None:
                pending.result()
            on = read if locked else write  # a locked batch: where it was read
            if pool is None:
                update(on, sql, bound, len(batch))
            else:
                pending = pool.submit(update, on, sql, bound, len(batch))
            if locked:  # the next batch is read on the other connection
                read, write = write, read
        if pending is not None:
            pending.result()
    engine.dispose()
    return time.perf_counter() - started


def _open(aead: AESGCM, token: str) -> bytes:
    version, _, body = token[4:].partition(":")
    blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return aead.decrypt(blob[:12], blob[12:], f"kt1:{version}:secrets.a".encode())


def _seal(aead: AESGCM, plain: bytes) -> str:
    nonce = os.urandom(12)
    blob = nonce + aead.encrypt(nonce, plain, b"kt1:9:secrets.a")
    return "kt1:9:" + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def crypto_loops(rounds: int) -> None:
    """Microseconds a token for each way of re-encrypting a batch: the bare loops'
    old per-token ``_seal(_open())``, their ``reseal``, keyturn's
    ``Keyring.reencrypt_many`` with one context for the batch (a column bound as a
    whole, as here) and with a context per token. Best of ``rounds`` (at least 5),
    alternated."""
    old, new = DataKey(1, os.urandom(32)), DataKey(9, os.urandom(32))
    ring = Keyring({1: old, 9: new}, 9)
    tokens = [old_token(old, f"secret-{i}-{os.urandom(6).hex()}") for i in range(20_000)]
    contexts = ["secrets.a"] * len(tokens)
    loops = {
        "per token": lambda: [_seal(new.aead, _open(old.aead, t)) for t in tokens],
        "reseal (the bare loops')": lambda: reseal(old.aead, new.aead, tokens, "secrets.a", 9),
        "keyturn": lambda: ring.reencrypt_many(tokens, "secrets.a", leave=9),
        "keyturn, a context per token": lambda: ring.reencrypt_many(tokens, contexts, leave=9),
    }
    # Each loop does the whole job: none is fast for failing.
    assert ring.decrypt(reseal(old.aead, new.aead, tokens[:1], "secrets.a", 9)[0], "secrets.a")
    assert None not in ring.reencrypt_many(tokens[:100], "secrets.a", leave=9)
    assert None not in ring.reencrypt_many(tokens[:100], contexts[:100], leave=9)
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(max(5, rounds)):
        for label, loop in loops.items():
            started = time.perf_counter()
            loop()
            best[label] = min(best[label], time.perf_counter() - started)
    for label, seconds in best.items():
        print(f"{label:<28} {seconds / len(tokens) * 1e6:5.2f} us a token")


def old_token(key: DataKey, secret: str) -> str:
    """``secret`` as a token of ``key``'s version, as the bench's tables hold them."""
    return Keyring({key.version: key}, key.version).encrypt(secret.encode(), "secrets.a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--backends", default="postgresql,mysql")
    parser.add_argument("--rounds", type=int, default=1, help="best of this many runs each")
    parser.add_argument(
        "--runs", default="all", help="comma-separated labels to run, e.g. keyturn,(b)bare"
    )
    parser.add_argument(
        "--phases", action="store_true", help="print where each keyturn run's time went"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="print each run's CPU seconds, client and server"
    )
    parser.add_argument(
        "--without",
        default="",
        help="patch steps out of keyturn's runs to measure them: checkpoints, sweep (unsafe)",
    )
    parser.add_argument(
        "--server-statements",
        action="store_true",
        help="print the PostgreSQL server's time per kind of statement, from its log",
    )
    parser.add_argument(
        "--server-cpu",
        action="store_true",
        help="print the PostgreSQL server's CPU per kind of statement (log_statement_stats)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print when the PostgreSQL swaps ran: before the first, per batch, after the last",
    )
    parser.add_argument(
        "--crypto",
        action="store_true",
        help="only time the re-encryption loops on 20,000 tokens, no database",
    )
    args = parser.parse_args()
    without = frozenset(filter(None, args.without.split(",")))
    if without - {"checkpoints", "sweep"}:
        parser.error("--without takes checkpoints and/or sweep")
    if args.crypto:
        crypto_loops(args.rounds)
        return
    if args.server_statements and args.server_cpu:
        parser.error("--server-statements and --server-cpu: one at a time")
    if args.timeline and args.server_cpu:
        parser.error("--timeline and --server-cpu: one at a time")
    from_log = args.server_statements or args.server_cpu or args.timeline
    log = server_log() if from_log else None
    if from_log and log is None:
        flag = "--server-cpu" if args.server_cpu else "--server-statements"
        if args.timeline:
            flag = "--timeline"
        parser.error(f"{flag}: no readable PostgreSQL log (set KEYTURN_BENCH_PG_LOG)")
    os.environ.setdefault("KEYTURN_KEK", secrets.token_hex(32))
    print(f"{args.rows} rows x 1 column, backup off, best of {args.rounds} round(s)")
    print(f"{'backend':<11} {'run':<9} {'seconds':>8} {'rows/s':>9}")
    for kind in args.backends.split(","):
        results: dict[str, float] = {}
        runs = [
            ("keyturn", lambda c: run_keyturn(c, True, phases=args.phases, without=without)),
            ("2workers", lambda c: run_keyturn(c, True, workers=2)),
            ("auto", lambda c: run_keyturn(c, True, workers=most_auto_workers(), auto=True)),
            ("per-row", lambda c: run_keyturn(c, False)),
            ("(a)seeds", run_seeds_script),
            ("(b)bare", lambda c, kind=kind: run_bare_bulk(c, kind)),
            ("(b)piped", lambda c, kind=kind: run_bare_bulk(c, kind, pipelined=True)),
            ("(b)safe", lambda c, kind=kind: run_bare_bulk(c, kind, pipelined=True, safe=True)),
        ]
        if kind == "postgresql":
            runs.append(("(b)ctid", lambda c: run_bare_bulk(c, "postgresql", True, by_ctid=True)))
        if args.runs != "all":
            runs = [(label, run) for label, run in runs if label in args.runs.split(",")]
        times: dict[str, list[float]] = {label: [] for label, _ in runs}
        cpu: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in runs}
        statements: dict[str, list[dict[str, float]]] = {label: [] for label, _ in runs}
        timelines: dict[str, list[dict[str, float]]] = {label: [] for label, _ in runs}
        logged = log is not None and kind == "postgresql"
        for _ in range(args.rounds):  # rounds alternate the runs, so drift hits them alike
            for label, run in runs:
                with tempfile.TemporaryDirectory() as tmp:
                    name, config = build(kind, args.rows, Path(tmp))
                    try:
                        if logged:
                            log_statements(name, cpu=args.server_cpu)
                            offset = log.stat().st_size
                        before = cpu_seconds(kind)
                        took = run(config)
                        ended = time.time()
                        times[label].append(took)
                        after = cpu_seconds(kind)
                        cpu[label].append((after[0] - before[0], after[1] - before[1]))
                        if logged:
                            time.sleep(0.2)  # the server's last lines
                            if args.timeline:
                                swaps = swap_times(log, offset, name)
                                timelines[label].append(timeline(swaps, ended - took, ended))
                            if args.server_statements or args.server_cpu:
                                spent = statement_ms(log, offset, name, cpu=args.server_cpu)
                                statements[label].append(spent)
                    finally:
                        drop_db(kind, name)
        for label, measured in times.items():
            results[label] = min(measured)
            spread = "  ".join(f"{t:.2f}" for t in measured)
            print(
                f"{kind:<11} {label:<9} {results[label]:>8.2f} {args.rows / results[label]:>9.0f}"
                f"   (each round: {spread})"
            )
        for label, used in cpu.items() if args.cpu else ():
            client = statistics.median(c for c, _ in used)
            server = statistics.median(s for _, s in used)
            print(f"{kind:<11} {label:<9} CPU s: client {client:.2f}, server {server:.2f}")
        for label, lines in timelines.items() if logged and args.timeline else ():
            if not all(lines):
                continue  # a run that swapped nothing
            medians = {k: statistics.median(line[k] for line in lines) for k in lines[0]}
            print(
                f"{kind:<11} {label:<9} ms: to first swap {medians['to first swap']:.0f}, "
                f"per full batch {medians['per full batch']:.1f} (swap "
                f"{medians['full swap']:.1f}), after last swap "
                f"{medians['after last swap']:.0f}; {medians['swaps']:.0f} swaps"
            )
        for label, spent in statements.items() if logged else ():
            if not spent:
                continue  # --timeline alone
            kinds = {k: statistics.median(s[k] for s in spent) for k in spent[0]}
            backends = kinds.pop(BACKENDS, None)
            listed = ", ".join(f"{k} {ms:.0f}" for k, ms in kinds.items())
            what = "server CPU ms" if args.server_cpu else "server ms"
            line = f"{kind:<11} {label:<9} {what}: {listed}; all {sum(kinds.values()):.0f}"
            print(line + (f"; {BACKENDS} {backends:.0f}" if backends is not None else ""))
        k = results.get("keyturn")
        if k is None:
            continue
        for label in ("2workers", "auto"):
            if label in results:
                print(f"{kind:<11} {label} vs 1 worker: {k / results[label]:.2f}x")
        # How many times faster keyturn (one worker) is than each baseline run.
        ratios = [
            f"vs {label} {results[label] / k:.2f}x{goal}"
            for label, goal in (
                ("per-row", ""),
                ("(a)seeds", " (goal >= 5x)"),
                ("(b)bare", " (goal >= 0.8x)"),
                ("(b)piped", " (goal >= 0.9x)"),
                ("(b)ctid", " (goal >= 0.9x)"),
                ("(b)safe", " (the same checks, nothing else)"),
            )
            if label in results
        ]
        print(f"{kind:<11} keyturn " + ", ".join(ratios))
        fastest = [label for label in ("(b)piped", "(b)ctid") if label in times]
        if fastest and args.rounds > 1:
            # Each round's runs ran minutes apart at most: the median of their ratios
            # moves less with this machine's drift than the best rounds do. Against
            # each round's fastest bare loop, the goal's baseline.
            best = [min(each) for each in zip(*(times[label] for label in fastest), strict=True)]
            paired = sorted(b / k for b, k in zip(best, times["keyturn"], strict=True))
            print(
                f"{kind:<11} keyturn vs the fastest of {', '.join(fastest)}, round by round: "
                + "  ".join(f"{r:.2f}" for r in paired)
                + f"  (median {statistics.median(paired):.2f}x)"
            )


if __name__ == "__main__":
    main()
