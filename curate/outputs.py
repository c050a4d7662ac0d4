"""Output directories curate writes: one owner at a time, and nothing deleted that curate did not write.

- ``directory_lock(path)``: an OS file lock (``flock``) on PATH/.curate.lock, held while a command
  writes there; released by the kernel when the process ends, however it ends, so a killed run
  needs no clean-up. A second command on the same directory stops with "PATH is in use by PID N".
  Re-entrant within a process (a recipe run holds it while its stages take it again).
- ``claim(path, marker)``: a directory curate may write: refused if it is a symlink, or if it is
  not empty and holds no ``marker`` (curate's manifest for it) among its files;
- ``clear_own(path)``: remove only what curate writes in a directory (``part-*.parquet``, names
  starting with "_" or ".", plus the caller's ``extra`` names); anything else stays, with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from curate.errors import RunDirError

log = logging.getLogger(__name__)

LOCK = ".curate.lock"
_HELD: dict[str, tuple[int, int]] = {}  # resolved directory -> (file descriptor, depth)


@contextmanager
def directory_lock(directory: str | Path) -> Iterator[None]:
    directory = Path(directory)
    refuse_symlink(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key in _HELD:
        descriptor, depth = _HELD[key]
        _HELD[key] = (descriptor, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (descriptor, _HELD[key][1] - 1)
        return
    descriptor = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise RunDirError(f"{directory} is in use by {holder}; wait for it to finish or choose another "
                          f"directory") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"PID {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])})".encode(), 0)
    _HELD[key] = (descriptor, 1)
    try:
        yield
    finally:
        if _HELD[key][1] <= 1:
            del _HELD[key]
            os.close(descriptor)  # closing releases the lock; the file stays (harmless, reused)
        else:
            _HELD[key] = (descriptor, _HELD[key][1] - 1)


def refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link; curate writes only into real directories it can own "
                          f"(point --out at {path.resolve()} itself)")


def own_name(name: str, extra: tuple[str, ...] = ()) -> bool:
    return name.startswith(("_", ".")) or (name.startswith("part-") and name.endswith(".parquet")) or name in extra


def foreign_entries(directory: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not own_name(p.name, extra)) if directory.is_dir() else []


def claim(directory: Path, marker: str, what: str, extra: tuple[str, ...] = (), ours: tuple[str, ...] = ()) -> None:
    """Refuse a symlink, or a non-empty directory without ``marker``, holding files curate did not
    write (``ours``: other names curate writes there, e.g. a run directory's stage folders)."""
    refuse_symlink(directory)
    if not directory.exists() or (directory / marker).exists():
        return
    foreign = [name for name in foreign_entries(directory, extra) if name not in ours]
    if foreign:
        raise RunDirError(f"{directory}: not empty and not a {what} curate wrote (it holds {foreign[:5]}); "
                          f"choose an empty or new directory")


RUN_FILES = ("report.json", "report.html", "subset.npy", "walkthrough.ipynb")


def claim_run_dir(directory: Path) -> None:
    """A run directory holds curate's files only: its own names, the RUN_FILES, and folders curate
    made (each holds a name starting with "_": a manifest, a pool's _pool.json, a marker). Anything
    else means the directory is someone else's: refused, before anything is written."""
    refuse_symlink(directory)
    if not directory.is_dir():
        return
    foreign = [p.name for p in directory.iterdir()
               if not own_name(p.name, RUN_FILES) and not (p.is_dir() and any(c.name.startswith("_") for c in p.iterdir()))]
    if foreign:
        raise RunDirError(f"{directory}: not a run directory of curate's (it holds {sorted(foreign)[:5]}, which curate "
                          f"did not write); choose an empty or new --out")


def clear_own(directory: Path, extra: tuple[str, ...] = ()) -> None:
    """Remove curate's files from ``directory``; leave (and name) everything else."""
    refuse_symlink(directory)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if own_name(path.name, extra) and path.name != LOCK:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    kept = foreign_entries(directory, extra)
    if kept:
        log.warning("%s: kept %d file(s) curate did not write: %s", directory, len(kept), kept[:5])
