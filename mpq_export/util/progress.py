"""Progress and log messages go through `logging` (logger "mpq_export"), never print().

Library users get silence by default; the CLI installs a stderr handler. `Progress` rate-limits
per-iteration messages so long loops say where they are without flooding the terminal.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("mpq_export")


class Progress:
    """`with Progress("calibrate", total) as p: p.update(i, "t=761")` logs at most every `every_s` s."""

    def __init__(self, stage: str, total: int, every_s: float = 2.0):
        self.stage, self.total, self.every_s = stage, total, every_s
        self._start = self._last = 0.0

    def __enter__(self) -> "Progress":
        self._start = self._last = time.perf_counter()
        log.info("[%s] started (%d steps)", self.stage, self.total)
        return self

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if now - self._last >= self.every_s or done == self.total:
            self._last = now
            elapsed = now - self._start
            eta = elapsed / max(done, 1) * (self.total - done)
            log.info("[%s] %d/%d %s (%.0fs elapsed, ~%.0fs left)", self.stage, done, self.total, detail, elapsed, eta)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            log.info("[%s] done in %.1fs", self.stage, time.perf_counter() - self._start)
