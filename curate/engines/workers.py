"""The local engine's worker processes: one pool, handed to whatever needs it (stages, the group
path, subset, reshard), started on first use and kept until closed, so processes start (and load
models, entry lists, artifacts) once per run instead of once per step.

Tasks and functions must pickle (module-level functions; a ``Stage`` value pickles by reference to
its functions): workers are started with "spawn", like img2dataset's and torch's, which is safe
with threads and CUDA. A stage that allows fewer processes than the pool (``Stage.max_workers``,
e.g. a model stage using every core through torch threads) gets its own smaller pool for that
map. One worker, or one task, runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Executor, ProcessPoolExecutor, wait
from typing import Any

from curate.progress import Progress


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class WorkerPool:
    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self._executor: Executor | None = None

    def map(self, function: Callable[[Any], Any], tasks: list, label: str, *, unit: str = "part",
            limit: int | None = None) -> list:
        """``[function(task) for task in tasks]`` on the workers, in task order; the first failure
        cancels what has not started and is raised."""
        if not tasks:
            return []
        processes = min(self.workers, limit or self.workers)
        with Progress(label, len(tasks), unit) as progress:
            if processes <= 1 or len(tasks) == 1:
                return [_counted(function(task), progress) for task in tasks]
            if processes < self.workers:
                with _executor(processes) as executor:
                    return _run(executor, function, tasks, progress)
            if self._executor is None:
                self._executor = _executor(self.workers)
            return _run(self._executor, function, tasks, progress)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _executor(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))


def _counted(result: Any, progress: Progress) -> Any:
    progress.update()
    return result


def _run(executor: Executor, function: Callable, tasks: list, progress: Progress) -> list:
    futures = [executor.submit(function, task) for task in tasks]
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for future in finished:
            if future.exception() is not None:
                for other in pending:
                    other.cancel()
                raise future.exception()
            progress.update()
    return [future.result() for future in futures]
