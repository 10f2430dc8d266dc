"""A progress line on a terminal (rows done/total, rows/s, ETA); silent otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Redraws one stderr line at most 10 times a second while a column is processed."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        frac = self.done / total if total else 1.0
        eta = (total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 24)
        self.stream.write(
            f"\r{self.label:<28} [{bar:<24}] {self.done}/{total} rows "
            f"{rate:,.0f} rows/s ETA {eta:4.0f}s"
        )
        if self.done >= total:
            self.stream.write("\n")
        self.stream.flush()


def progress_factory(enabled: bool | None = None) -> Callable[[str, int], Progress] | None:
    """A Progress maker when stderr is a terminal (or ``enabled``), else None."""
    stream = sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        return None
    return lambda label, total: Progress(label, total, stream)
