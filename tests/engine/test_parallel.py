"""Parallel rotation: `--workers N`, `--join` from another process, killed workers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Database, base_env, pack_form, run_cli
from parallel_app import ROWS, check_all_rotated, helper_pids, parallel_app, wait_for

import keyturn


def chunk_rows(database: Database) -> list[tuple[Any, ...]]:
    return database.rows("SELECT state, owner FROM keyturn_chunks")


def test_workers_split_the_table(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    proc = app.cli(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "200",
        "--max-rate", "1000", check=True,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    tokens = ROWS + ROWS - ROWS // 10
    assert (report["rotated"], report["failed"], report["new_version"]) == (tokens, 0, 2)
    assert report["columns"]["secrets.b"]["skipped_empty"] == ROWS // 10
    rows = chunk_rows(database)
    assert len(rows) == ROWS // 200 + 1 and {s for s, _ in rows} == {"done"}
    assert len({owner for _, owner in rows}) == 2, "both workers took chunks"
    check_all_rotated(app, database, 2)
    assert database.rows("SELECT state FROM keyturn_jobs") == [("succeeded",)]


def test_a_parallel_rotations_backup_puts_back_every_token(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker backs up the chunks it rotates (column ``a`` bound as a column
    keeps the bytes its re-encryption decoded, ``b`` bound per row its tokens):
    restore puts back every token the job replaced, exactly."""
    app = parallel_app(database, tmp_path, monkeypatch)
    before = database.rows("SELECT id, a, b FROM secrets ORDER BY id")
    proc = app.cli(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "200",
        "--max-rate", "1000", check=True,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    owners = {owner for _, owner in chunk_rows(database)}
    assert len(owners) == 2, "both workers took chunks"
    packs = database.rows("SELECT column_name, data FROM keyturn_backup_batches")
    assert {(column, pack_form(data)) for column, data in packs} == {
        ("a", "opened"),
        ("b", "tokens"),
    }
    restored = json.loads(app.cli("restore", report["job"], "--yes", "--json", check=True).stdout)
    assert restored["restored"] == report["rotated"] == ROWS + ROWS - ROWS // 10
    assert database.rows("SELECT id, a, b FROM secrets ORDER BY id") == before


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_join_from_another_process(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    assert app.cli("rotate", "--join").returncode == 1  # nothing to join yet
    coordinator = app.start(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "100",
        "--max-rate", "500",
    )  # fmt: skip
    wait_for(lambda: _has_chunks(database))
    joined = app.cli("rotate", "--join", "--json", "--max-rate", "500")
    assert joined.returncode == 0, joined.stderr
    out, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 0, err
    mine, total = json.loads(joined.stdout), json.loads(out)
    assert mine["joined"] is True and mine["rotated"] > 0
    assert total["rotated"] == ROWS + ROWS - ROWS // 10, "every token counted exactly once"
    assert len({owner for _, owner in chunk_rows(database)}) == 3
    check_all_rotated(app, database, 2)


def _has_chunks(database: Database) -> bool:
    try:
        return bool(database.rows("SELECT count(*) FROM keyturn_chunks")[0][0])
    except Exception:  # the table is created with the job
        return False


def test_killed_worker_loses_nothing(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL a helper mid-chunk: its lease expires, the coordinator finishes its chunk;
    then SIGKILL the coordinator: the next `keyturn rotate` resumes the same job."""
    app = parallel_app(database, tmp_path, monkeypatch)
    coordinator = app.start(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "400",
        "--lease-seconds", "2", "--max-rate", "800", "--chunk-time", "0.05",
    )  # fmt: skip
    wait_for(lambda: bool(helper_pids(coordinator.pid)))
    time.sleep(1.0)
    for pid in helper_pids(coordinator.pid):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    states = {s for s, _ in chunk_rows(database)}
    assert "running" in states or "pending" in states, "the run ended before the kills"
    # Every value still decrypts right now, on one version or the other.
    with keyturn.open(app.config) as store:
        for i, a, _ in database.rows("SELECT id, a, b FROM secrets"):
            assert store.decrypt(a, context="secrets.a") == f"sk_{i}"
    final = app.cli("rotate", "--yes", "--json", "--lease-seconds", "2")
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["resumed"] is True and report["new_version"] == 2, "no new version minted"
    assert report["rotated"] + report["swept"] >= ROWS + ROWS - ROWS // 10 - 1
    assert {s for s, _ in chunk_rows(database)} == {"done"}
    check_all_rotated(app, database, 2)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_uuid_primary_key(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A native UUID key: keyset walk, chunk bounds (stored as JSON text), swaps."""
    import uuid

    database.execute("CREATE TABLE hooks (id UUID PRIMARY KEY, secret TEXT)")
    values = {uuid.uuid4(): f"whsec_{i}" for i in range(600)}
    for key, secret in values.items():
        database.execute("INSERT INTO hooks VALUES (:k, :s)", k=key, s=secret)
    (tmp_path / "keyturn.toml").write_text(
        f'database = "{database.url}"\n'
        '[[columns]]\ntable = "hooks"\ncolumn = "secret"\nbind = "row"\n'
    )
    env = {**base_env(), "KEYTURN_KEK": os.urandom(32).hex()}
    monkeypatch.setenv("KEYTURN_KEK", env["KEYTURN_KEK"])
    for args in (["init"], ["encrypt-existing"]):
        run_cli(*args, cwd=tmp_path, env=env, check=True)
    proc = run_cli(
        "rotate", "--yes", "--json", "--workers", "2", "--rows-per-chunk", "50",
        cwd=tmp_path, env=env, check=True,
    )  # fmt: skip
    assert json.loads(proc.stdout)["rotated"] == 600
    with keyturn.open(tmp_path / "keyturn.toml") as store:
        for key, token in database.rows("SELECT id, secret FROM hooks"):
            assert token.startswith("kt1:2:")
            assert store.decrypt(token, context=f"hooks.secret#{key}") == values[key]


def test_the_coordinator_notices_at_once_that_its_last_helper_exited() -> None:
    """It waited up to a second per poll for the helper's last chunk; now it returns
    as the helper exits, and sleeps the whole period only when no helper runs."""
    import subprocess
    import sys

    from keyturn.ops.rotate import _wait_for_any

    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    started = time.monotonic()
    _wait_for_any([helper], 10.0)
    assert helper.returncode == 0 and time.monotonic() - started < 2.0
    started = time.monotonic()
    _wait_for_any([helper], 0.2)  # exited already: nothing to wait for but the period
    assert 0.2 <= time.monotonic() - started < 1.0


def probed_app(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle: float | None
) -> Any:
    """parallel_app, where --workers auto's probe decides at once and measures ``idle``,
    and a helper pays for itself however little is left (the table is small)."""
    from keyturn.ops import rotate

    monkeypatch.setattr(rotate, "PROBE_SECONDS", 0.0)
    monkeypatch.setattr(rotate, "HELPERS_PAY_SECONDS", 0.0)
    monkeypatch.setattr(rotate.IdleCores, "idle", lambda self: idle)
    return parallel_app(database, tmp_path, monkeypatch)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("idle", "workers"), [(1.0, 2), (0.3, 1), (None, 1)])
def test_auto_workers_go_parallel_only_for_an_idle_core(
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    idle: float | None,
    workers: int,
) -> None:
    """--workers auto walks sequentially while the machine's idle cores are measured;
    with one idle, it stops there, plans chunks for the rest of the table and starts
    a helper; without (or if this machine cannot tell), it stays one sequential
    walk. The rotation is whole and counted once either way."""
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = probed_app(database, tmp_path, monkeypatch, idle)
    options = RotateOptions(workers=4, auto_workers=True, rows_per_chunk=200)
    with keyturn.open(app.config) as store:
        report = Rotator(store, options).run()
    assert report.extra["workers"] == workers
    assert report.extra["idle_cores"] == idle
    assert report.totals["rotated"] == ROWS + ROWS - ROWS // 10
    planned = chunk_rows(database)
    if workers == 1:
        assert planned == [], "no idle core: no chunks, one sequential walk"
    else:
        assert planned and {state for state, _ in planned} == {"done"}
        (first,) = database.rows("SELECT lo FROM keyturn_chunks WHERE chunk_no = 0")[0]
        assert first is not None, "the chunks begin where the sequential walk stopped"
    check_all_rotated(app, database, 2)


@pytest.mark.parametrize("database", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_auto_workers_start_no_helper_for_what_one_worker_finishes_first(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle core found, but less left than a helper's start pays for (at the walk's
    pace so far): the chunks are planned and this process works them alone."""
    from keyturn.engine import chunks
    from keyturn.ops import rotate
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = probed_app(database, tmp_path, monkeypatch, 1.0)
    monkeypatch.setattr(rotate, "HELPERS_PAY_SECONDS", 3600.0)
    counted: list[tuple[int, int]] = []
    rows_after = chunks.rows_after

    def counting(*args: Any) -> int:
        found = rows_after(*args)
        counted.append((args[-1], found))
        return found

    monkeypatch.setattr(chunks, "rows_after", counting)
    spawned: list[object] = []
    monkeypatch.setattr("keyturn.ops.rotate_helper.spawn", lambda *a: spawned.append(a))
    options = RotateOptions(workers=4, auto_workers=True, rows_per_chunk=200)
    with keyturn.open(app.config) as store:
        report = Rotator(store, options).run()
    assert spawned == [] and report.extra["workers"] == 1
    assert report.extra["idle_cores"] == 1.0
    ((most, found),) = counted
    assert 0 < found < most, "the rest counted, no further than a helper's worth"
    planned = chunk_rows(database)
    assert planned and {state for state, _ in planned} == {"done"}
    assert report.totals["rotated"] == ROWS + ROWS - ROWS // 10
    check_all_rotated(app, database, 2)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_auto_workers_stay_alone_under_a_rate_limit(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-rate applies per worker: auto going parallel would multiply it."""
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = probed_app(database, tmp_path, monkeypatch, 1.0)
    options = RotateOptions(workers=4, auto_workers=True, max_rate=20_000)
    with keyturn.open(app.config) as store:
        report = Rotator(store, options).run()
    assert report.extra["workers"] == 1 and chunk_rows(database) == []
    check_all_rotated(app, database, 2)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_rotation_that_dies_as_it_goes_parallel_resumes_whole(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch of --workers auto writes the chunks and the job's chunk mode in one
    transaction after the walk's last checkpoint: a rotation that dies right after is
    resumed by `keyturn rotate`, the walked rows counted once, the rest by chunks."""
    from keyturn.ops import rotate_helper
    from keyturn.ops.rotate import RotateOptions, Rotator

    app = probed_app(database, tmp_path, monkeypatch, 1.0)

    def dies(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed as its first helper starts")

    monkeypatch.setattr(rotate_helper, "spawn", dies)
    options = RotateOptions(workers=2, auto_workers=True, rows_per_chunk=300)
    with keyturn.open(app.config) as store, pytest.raises(SystemExit):
        Rotator(store, options).run()
    assert database.rows("SELECT state FROM keyturn_jobs") == [("running",)]
    assert {s for s, _ in chunk_rows(database)} == {"pending"}
    final = app.cli("rotate", "--yes", "--json")
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["resumed"] is True and report["new_version"] == 2
    assert report["rotated"] == ROWS + ROWS - ROWS // 10
    assert {s for s, _ in chunk_rows(database)} == {"done"}
    check_all_rotated(app, database, 2)


def test_workers_auto_on_the_command_line(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = parallel_app(database, tmp_path, monkeypatch)
    for bad in ("0", "65", "two"):
        refused = app.cli("rotate", "--yes", "--workers", bad)
        assert refused.returncode == 2 and "--workers" in refused.stderr, refused.stderr
    done = app.cli("rotate", "--yes", "--workers", "auto", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["workers"] == 1 and report["idle_cores"] is None, "done within the probe"
    check_all_rotated(app, database, 2)
