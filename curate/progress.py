"""Progress a person can follow: a tqdm bar on a terminal, log lines when output goes to a file.

``Progress(label, total, unit)`` counts finished units. On a terminal (stderr is a TTY) it is a
tqdm bar; otherwise it logs ``label: 5/12 parts (42%), 31 s, ~43 s left`` at INFO at most every
``CURATE_PROGRESS_SECONDS`` seconds (default 30) and once at the end, so a run redirected to a
file, a CI log or a scheduler's log shows where it is.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger("curate.progress")


def interval() -> float:
    try:
        return float(os.environ.get("CURATE_PROGRESS_SECONDS", "30"))
    except ValueError:
        return 30.0


class Progress:
    def __init__(self, label: str, total: int, unit: str = "part"):
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.started = self.logged = time.monotonic()
        self.bar = tqdm(total=total, desc=label, unit=unit, leave=False) if sys.stderr.isatty() else None

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if now - self.logged >= interval() and self.done < self.total:
            self.logged = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.started
        share = self.done / self.total if self.total else 1.0
        left = f", ~{elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
        return f"{self.label}: {self.done}/{self.total} {self.unit}s ({share:.0%}), {elapsed:.0f} s{left}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total and time.monotonic() - self.started >= interval():
            log.info("%s", self.line(time.monotonic()))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
