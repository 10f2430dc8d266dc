"""The batch engine's write pipeline (server backends write a batch while the next is decided)."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest

from keyturn.rewrite import _Pipeline


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
