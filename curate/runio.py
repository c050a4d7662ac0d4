"""Run-directory I/O: atomic writes, per-partition completion markers, stage manifests.

Every file a stage writes appears whole or not at all (written to a temporary name in the
same directory, then renamed); a disk that fills meanwhile is a ``DiskFullError`` naming the file. A partition is finished when its marker exists; the marker
is written after the partition's data, so a crash between the two re-runs the partition
and the rename overwrites the earlier copy. Markers double as per-partition statistics.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import DiskFullError
from curate.fingerprint import tail_digest

MARKER_DIR = "_done"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit
MANIFEST = "_manifest.json"
_VERSIONED = ("curate", "pyarrow", "polars", "numpy", "pyspark", "img2dataset", "fasttext-predict", "cld3-py")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails (so ``path`` is whole or absent, never half written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise DiskFullError(f"{path}: {os.strerror(error.errno).lower()} while writing it (nothing of it was "
                                f"kept; free space and re-run the command: finished parts are kept and "
                                f"it resumes)") from error
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_table(table: pa.Table, path: str | Path, *, row_group_size: int | None = None) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


def atomic_write_ipc(table: pa.Table, path: str | Path) -> None:
    """Scratch tables this tool reads back itself: Arrow IPC, uncompressed, memory-mappable."""
    with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), table.schema) as writer:
        writer.write_table(table)


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, default=str) + "\n", path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def marker_path(stage_dir: Path, part: str) -> Path:
    return stage_dir / MARKER_DIR / f"{part}.json"


def is_done(stage_dir: Path, part: str, data_file: Path | None = None) -> bool:
    """The partition's marker exists and, when it records one, its data file is the one written
    then (same size and footer digest): a truncated or replaced part is not done."""
    marker = marker_path(stage_dir, part)
    if not marker.exists():
        return False
    if data_file is None:
        return True
    if not data_file.is_file():
        return False
    stats = read_json(marker)
    if "bytes" not in stats:
        return True
    size = data_file.stat().st_size
    return size == stats["bytes"] and tail_digest(data_file, size) == stats.get("tail_sha256")


def mark_done(stage_dir: Path, part: str, stats: dict[str, Any], data_file: Path | None = None) -> None:
    """Write the partition's marker (after its data); with ``data_file``, its size and footer digest."""
    if data_file is not None:
        size = data_file.stat().st_size
        stats = {**stats, "bytes": size, "tail_sha256": tail_digest(data_file, size)}
    atomic_write_json(stats, marker_path(stage_dir, part))


def damaged_parts(stage_dir: Path) -> list[str]:
    """Parts whose marker exists but whose data file is missing, truncated or replaced."""
    markers = sorted((stage_dir / MARKER_DIR).glob("*.json")) if (stage_dir / MARKER_DIR).exists() else []
    return [m.stem for m in markers if not is_done(stage_dir, m.stem, stage_dir / f"{m.stem}.parquet")]


def done_stats(stage_dir: Path) -> list[dict[str, Any]]:
    marker_dir = stage_dir / MARKER_DIR
    if not marker_dir.exists():
        return []
    return [read_json(path) for path in sorted(marker_dir.glob("*.json"))]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(stage_dir: Path, **fields: Any) -> dict[str, Any]:
    manifest = {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions(), **fields}
    atomic_write_json(manifest, stage_dir / MANIFEST)
    return manifest


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    return read_json(path) if path.exists() else None


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written directory into place (used where a whole directory is one unit)."""
    if final_dir.exists():
        old = _tmp_name(final_dir)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
