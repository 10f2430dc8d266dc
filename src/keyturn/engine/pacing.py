"""Pacing the walk: batch sizes that adapt to a target time per batch, a rate limit,
and a writer thread that overlaps one batch's write with the next one's read."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field


@dataclass
class Pacing:
    """Batch sizing: adapt to ``chunk_time`` seconds a batch, at most ``max_rate`` rows/s."""

    chunk_time: float = 0.5
    max_rate: float | None = None
    batch_size: int = 200
    min_batch: int = 10
    max_batch: int = 20_000
    _started: float = field(default_factory=time.monotonic)
    _rows: int = 0

    def rate(self) -> float | None:
        """Rows a second so far (None before any): what the rest of a walk may take."""
        elapsed = time.monotonic() - self._started
        return self._rows / elapsed if self._rows and elapsed > 0 else None

    def after_batch(self, rows: int, seconds: float) -> None:
        self._rows += rows
        if seconds > 0 and rows >= self.batch_size:
            ideal = self.batch_size * self.chunk_time / seconds
            # At most double: on a pipelined backend a batch is read and decided
            # while the one before is written, so a sudden jump leaves the writer
            # idle; and the first big batch's row locks come gradually.
            size = min((self.batch_size + ideal) / 2, 2 * self.batch_size)
            self.batch_size = int(min(self.max_batch, max(self.min_batch, size)))
        if self.max_rate:
            ahead = self._rows / self.max_rate - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)


class Pipeline:
    """Writes each batch on one background thread while the next batch is read and
    decided, so a database server's work overlaps ours. Batches are still written
    one at a time, in order; a write's error is raised at the next ``submit``.
    Disabled, it writes inline."""

    def __init__(self, enabled: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keyturn-write") if enabled else None
        self._pending: list[Future[None]] = []

    def submit(self, write: Callable[[], None]) -> None:
        """Write after everything queued before is done (one batch in flight)."""
        self.wait()
        self.then(write)

    def then(self, task: Callable[[], None]) -> None:
        """Run ``task`` after everything queued before, without waiting for it here:
        for small follow-ups (a walk's end) that must not hold up the next read."""
        if self._pool is None:
            task()
        else:
            self._pending.append(self._pool.submit(task))

    def wait(self) -> None:
        """Until everything queued is done (or has failed: the first error raised here)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        try:
            if error is None:
                self.wait()
            elif self._pending:
                wait_for(self._pending)  # let them commit or roll back; ours is the error
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
