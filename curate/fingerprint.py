"""Digests that decide whether earlier output can be reused (DESIGN.md section 3: resumable runs).

- ``file_sha256``: the sha256 of a file's bytes, computed once per (path, size, mtime) in a process;
- ``digest``: a short stable hash of a JSON-able value (configs, file lists, upstream fingerprints).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any


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


def digest(value: Any, length: int = 16) -> str:
    """A hex digest of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    blob = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
