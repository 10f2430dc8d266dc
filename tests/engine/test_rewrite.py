"""The batch engine's write pipeline (server backends write a batch while the next is
decided), how a MariaDB batch is cut into statements and written into them, and the
collector's threshold while a walk runs."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from conftest import App
from hypothesis import given
from hypothesis import strategies as st

import keyturn
from keyturn.engine import walk
from keyturn.engine.pacing import Pipeline as _Pipeline
from keyturn.engine.walk import _Collector, _spans


@pytest.mark.parametrize("enabled", [True, False])
def test_batches_are_written_one_at_a_time_in_order(enabled: bool) -> None:
    written: list[int] = []
    active = threading.Semaphore(1)

    def write(n: int) -> None:
        assert active.acquire(blocking=False), "two batches were written at once"
        time.sleep(0.01)
        written.append(n)
        active.release()

    with _Pipeline(enabled) as pipeline:
        for n in range(5):
            pipeline.submit(partial(write, n))
    assert written == list(range(5))


def test_a_failed_write_stops_the_next_one() -> None:
    written: list[int] = []

    def fail() -> None:
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"), _Pipeline(True) as pipeline:
        pipeline.submit(fail)
        pipeline.submit(lambda: written.append(2))
    assert written == []


def test_an_error_while_deciding_waits_for_the_write_in_flight() -> None:
    """The batch being written commits (or rolls back) before the error propagates."""
    done = threading.Event()

    def slow_write() -> None:
        time.sleep(0.2)
        done.set()

    with pytest.raises(ValueError, match="bad batch"), _Pipeline(True) as pipeline:
        pipeline.submit(slow_write)
        raise ValueError("bad batch")
    assert done.is_set()


def test_a_follow_up_does_not_hold_up_the_caller_and_runs_after_the_write() -> None:
    """Pipeline.then (a walk's end): queued behind the write in flight without waiting
    for it; the next submit waits for both, and an error of either is raised there."""
    order: list[str] = []
    release = threading.Event()

    def write() -> None:
        release.wait(5)
        order.append("write")

    with _Pipeline(True) as pipeline:
        pipeline.submit(write)
        pipeline.then(lambda: order.append("end"))
        order.append("caller")  # reached while the write still waits
        release.set()
        pipeline.submit(lambda: order.append("next"))
    assert order == ["caller", "write", "end", "next"]

    def fail() -> None:
        raise RuntimeError("checkpoint failed")

    with pytest.raises(RuntimeError, match="checkpoint failed"), _Pipeline(True) as pipeline:
        pipeline.then(fail)
        pipeline.submit(lambda: order.append("never"))
    assert "never" not in order


@pytest.fixture
def gc_threshold() -> Iterator[None]:
    found = gc.get_threshold()
    yield
    gc.set_threshold(*found)


@pytest.mark.usefixtures("gc_threshold")
def test_overlapping_walks_relax_the_collector_until_the_last_one_ends() -> None:
    """The collector's threshold is raised while any walk runs (they may overlap on
    threads) and is put back as it was found once the last one ends."""
    gc.set_threshold(700, 10, 10)
    collector = _Collector()
    first, second = collector.relaxed(), collector.relaxed()
    first.__enter__()
    assert gc.get_threshold() == (walk._WALK_THRESHOLD, 10, 10)
    second.__enter__()
    first.__exit__(None, None, None)  # the first walk ends while the second runs
    assert gc.get_threshold() == (walk._WALK_THRESHOLD, 10, 10)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    gc.set_threshold(0)  # automatic collection off: a walk leaves it off
    with collector.relaxed():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold()[0] == 0


@pytest.mark.usefixtures("gc_threshold")
def test_a_walk_runs_with_the_collector_relaxed(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch is read and decided with the threshold raised, so a batch's rows
    arriving do not start a collection every 700 rows; it is back after the walk."""
    gc.set_threshold(700, 10, 10)
    seen: list[int] = []
    read = walk.fetch_raw

    def watched(*args: Any) -> list[tuple[Any, ...]]:
        seen.append(gc.get_threshold()[0])
        return read(*args)

    app.cli("init", check=True)
    app.cli("encrypt-existing", check=True)
    monkeypatch.setattr(walk, "fetch_raw", watched)
    with keyturn.open(app.config) as store:
        report = keyturn.verify(store)
    assert report.totals["ok"] and seen and set(seen) == {walk._WALK_THRESHOLD}
    assert gc.get_threshold() == (700, 10, 10)


@given(
    widths=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    rows=st.integers(1, 10),
    chars=st.integers(1, 200),
)
def test_statements_cover_every_row_once_within_their_limits(
    widths: list[int], rows: int, chars: int
) -> None:
    keys = list(range(len(widths)))
    values = ["x" * w for w in widths]
    spans = _spans([keys, values], rows, chars)
    assert [i for start, stop in spans for i in range(start, stop)] == keys
    for start, stop in spans:
        assert 1 <= stop - start <= rows
        # 20 characters counted for each key: an int's longest literal.
        size = sum(20 + w for w in widths[start:stop])
        assert size <= chars or stop - start == 1, "only a lone row may be over the limit"


_PLAIN_TEXT = st.text(alphabet="abcXYZ019:_.-", max_size=300)
_ANY_VALUE = st.one_of(
    st.integers(-(2**63), 2**63 - 1), _PLAIN_TEXT, st.text(max_size=20), st.none(), st.binary()
)


@given(
    st.integers(1, 3).flatmap(
        lambda width: st.lists(
            st.tuples(*[st.one_of(_ANY_VALUE, _PLAIN_TEXT)] * width), min_size=1, max_size=700
        )
    ),
    st.booleans(),
)
def test_a_mariadb_swap_writes_each_value_as_a_literal_or_a_placeholder_in_row_order(
    rows: list[tuple[Any, ...]], values_rows: bool
) -> None:
    """A bulk swap's text is its rows in order, each value written as a literal
    (ints, and text of the plain characters, quoted) or left to the driver as
    ``%s``; the values left are bound in statement order."""
    from keyturn.engine.dialects.mysql import BulkStatement, _literal

    names = [f"c{i}" for i in range(len(rows[0]))]
    slots = ", ".join(["{}"] * len(names))
    first = "SELECT " + ", ".join(f"{{}} AS {n}" for n in names)
    statement = (
        BulkStatement("HEAD(", first, " UNION ALL VALUES ", f"({slots})", ", ", ")TAIL")
        if values_rows
        else BulkStatement("HEAD(", first, " UNION ALL ", f"SELECT {slots}", " UNION ALL ", ")TAIL")
    )
    sql, bound = statement.render([list(column) for column in zip(*rows, strict=True)])
    texts = [[_literal(v) for v in row] for row in rows]
    expected = statement.head + statement.first.format(*texts[0])
    for row in texts[1:]:
        expected += (
            statement.then if row is texts[1] else statement.between
        ) + statement.row.format(*row)
    assert sql == expected + statement.tail
    assert bound == [v for row in rows for v in row if _literal(v) == "%s"]


@pytest.mark.parametrize("at", [0, 255, 256, 511, 599])
def test_one_odd_text_among_many_plain_ones_goes_to_the_driver(at: int) -> None:
    """A column's text is checked for the plain characters all at once: one value
    that is not plain, wherever it is, sends that value to the driver to escape."""
    from keyturn.engine.dialects.mysql import BulkStatement

    column = [f"kt1:2:{i}" for i in range(600)]
    column[at] = "x'); DROP TABLE t; --"
    statement = BulkStatement("(", "SELECT {} AS a", " UNION ALL VALUES ", "({})", ", ", ")")
    sql, bound = statement.render([column])
    assert bound == [column[at]]
    assert "DROP" not in sql and sql.count("%s") == 1
