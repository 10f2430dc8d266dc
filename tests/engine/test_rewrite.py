"""The batch engine's write pipeline (server backends write a batch while the next is
decided) and how a MariaDB batch is cut into statements."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.engine.pacing import Pipeline as _Pipeline
from keyturn.engine.walk import _spans


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
