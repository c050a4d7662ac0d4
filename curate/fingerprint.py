"""Digests that decide whether earlier output can be reused (DESIGN.md section 3: resumable runs).

What a stage's fingerprint covers (curate.engines.plan): its name, resolved config and
description (model, weights, metadata digests), the signature of every pool shard, of every
sidecar part it reads and of every file its config names (``file_field``: metadata lists, target
embeddings, lookup tables), and the fingerprints of the stages it reads from. A changed input
changes the fingerprint of exactly the stages downstream of it.

A file's signature (``file_signature``):
- a file of at most ``SMALL_FILE`` bytes (4 MiB): the sha256 of its whole content, so any edit
  counts, even one that keeps the size and modification time;
- a larger file: its size, its modification time and the sha256 of its first 64 KiB and last
  256 KiB (a parquet file's footer, with its row groups' statistics, is at the end). An edit of a
  large file in place that keeps size, mtime, head and tail is not seen.
Signatures are memoised per (path, size, mtime, inode) within a process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

SMALL_FILE = 4 << 20
HEAD, TAIL = 64 << 10, 256 << 10


def file_sha256(path: str | Path) -> str:
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def file_signature(path: str | Path) -> str:
    """A short signature of a file's content (see the module docstring)."""
    stat = os.stat(path)
    return _signature(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=1 << 16)
def _signature(path: str, size: int, mtime_ns: int, inode: int) -> str:
    if size <= SMALL_FILE:
        return "sha256:" + _sha256(path, size, mtime_ns)[:32]
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        sha.update(handle.read(HEAD))
        handle.seek(max(0, size - TAIL))
        sha.update(handle.read(TAIL))
    return f"size:{size}:mtime:{mtime_ns}:ends:{sha.hexdigest()[:32]}"


def tail_digest(path: str | Path, size: int | None = None) -> str:
    """The sha256 of a file's last 64 KiB (a parquet footer): recorded in completion markers."""
    size = os.stat(path).st_size if size is None else size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - HEAD))
        return hashlib.sha256(handle.read()).hexdigest()[:32]


def digest(value: Any, length: int = 16) -> str:
    """A hex digest of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    blob = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
