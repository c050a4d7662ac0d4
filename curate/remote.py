"""Pools and run directories on object stores and other remote filesystems, through a local mirror.

A path argument may be a URL: ``s3://``, ``gs://``, ``hdfs://``, ``abfs://`` (pyarrow's own
filesystems, credentials and endpoint from the usual environment, e.g. AWS_ENDPOINT_URL), or any
protocol an installed fsspec implementation serves. A command then works on a local mirror of it
(``CURATE_CACHE_DIR``, default ``~/.cache/curate/remote/<scheme>/<bucket>/<path>``):

- ``pull``: before the command, the remote tree is copied into the mirror; a file already there
  with the same size and modification time is not fetched again, so a second run moves only what
  changed, and a file that disappeared remotely disappears from the mirror (if curate had mirrored it).
- ``push`` (outputs only, ``--out``): after each recipe stage and when the command ends, whether it
  succeeded or failed, the files that changed are uploaded. Deletions go first, then data files, then
  completion markers, then manifests, then ``.curate-mirror.json`` (the index): each object store PUT
  is whole or absent, so a reader never sees a manifest or a marker before the data it describes,
  and a push cut short leaves parts without markers, which the next run recomputes.

Why a mirror and not reads and writes in place: curate's resume markers and whole-or-absent writes
rely on an atomic rename, its run lock on flock, linked npz embeddings on memory-mapping and tar
images on reads by offset; none of these exist on an object store. The cost is local disk for the
pool (its parquet, sidecars and tars) and one download of it per machine.

The index (``.curate-mirror.json``, on both sides) records for every file its size, the local
modification time it had when pushed and the remote time it got, so a file pulled back onto another
machine keeps the local time curate's fingerprints and ``check_pool`` cache saw, unless the remote
object was replaced since (then its remote time is taken, and fingerprints change).
One writer per remote run directory at a time: two machines pushing to the same URL overwrite each
other's files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from curate.errors import CurateError
from curate.runio import atomic_path

log = logging.getLogger(__name__)

INDEX = ".curate-mirror.json"
_LOCAL_ONLY = (".curate.lock", INDEX)
_CHUNK = 8 << 20


class RemoteError(CurateError):
    """A remote path that cannot be reached, listed, read or written; the message names the URL."""


@dataclass(frozen=True)
class RemotePath:
    """A path argument that names a remote filesystem (``scheme://...``, not ``file://``)."""
    url: str

    def __str__(self) -> str:
        return self.url


def parse_path(value: str) -> Path | RemotePath:
    """A path argument: a local path, a ``file://`` URL (a local path), or a remote URL."""
    scheme, separator, _ = value.partition("://")
    if not separator:
        return Path(value)
    if scheme != "file":
        return RemotePath(value.rstrip("/"))
    parsed = urlparse(value)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{value}: a file:// URL must name this machine (file:///path)")
    return Path(unquote(parsed.path))


def filesystem(url: str):
    """(pyarrow FileSystem, path inside it) for a URL: pyarrow's own filesystems first, else fsspec's."""
    import pyarrow as pa
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
        import fsspec

        try:
            remote, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as fsspec_error:
            raise RemoteError(f"{url}: no filesystem for this URL (pyarrow: {error}; fsspec: {fsspec_error}); "
                              f"install the fsspec package for its scheme or mount it") from fsspec_error
        return fs.PyFileSystem(fs.FSSpecHandler(remote)), path


def mirror_dir(url: str) -> Path:
    """The local mirror of a URL: CURATE_CACHE_DIR (default ~/.cache/curate/remote)/scheme/host/path."""
    root = Path(os.environ.get("CURATE_CACHE_DIR") or Path.home() / ".cache" / "curate" / "remote")
    parsed = urlparse(url)
    parts = [p for p in PurePosixPath(parsed.netloc + "/" + parsed.path).parts if p not in ("/", "..", ".")]
    return root.joinpath(parsed.scheme, *parts)


def _remote_files(remote, base: str) -> dict[str, tuple[int, int]]:
    """Every file under ``base``: relative posix path -> (size, mtime_ns)."""
    from pyarrow import fs

    files = {}
    for info in remote.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == fs.FileType.File:
            mtime = info.mtime_ns if info.mtime_ns is not None else 0
            files[PurePosixPath(info.path).relative_to(base.rstrip("/")).as_posix()] = (info.size, mtime)
    return files


def _read_index(remote, path: str) -> dict[str, list[int]]:
    try:
        with remote.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, ValueError):
        return {}


def _local_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name not in _LOCAL_ONLY and ".tmp-" not in path.name:
            yield path.relative_to(root).as_posix(), path


def _order(relative: str) -> tuple[int, str]:
    """Upload order: data, then completion markers, then other state, then manifests."""
    name = PurePosixPath(relative).name
    if "_done" in PurePosixPath(relative).parts[:-1]:
        rank = 1
    elif name in ("_manifest.json", "_pool.json", "_run.json"):
        rank = 3
    else:
        rank = 2 if name.startswith("_") else 0
    return rank, relative


def pull(target: RemotePath, *, must_exist: bool) -> Path:
    """Bring the remote file or directory into its local mirror; return the mirror's path."""
    from pyarrow import fs

    remote, base = filesystem(target.url)
    local = mirror_dir(target.url)
    try:
        info = remote.get_file_info(base)
        if info.type == fs.FileType.File:
            _download(remote, base, local, info.mtime_ns or 0)
            return local
        if info.type == fs.FileType.NotFound and must_exist:
            raise RemoteError(f"{target.url}: no such file or directory")
        files = _remote_files(remote, base) if info.type == fs.FileType.Directory else {}
        index = _read_index(remote, f"{base}/{INDEX}") if INDEX in files else {}
        files.pop(INDEX, None)
        fetched = _sync_down(remote, base, local, files, index)
    except OSError as error:
        raise RemoteError(f"{target.url}: {error}") from error
    log.info("%s: mirrored in %s (%d files, %d fetched)", target.url, local, len(files), fetched)
    return local


def _sync_down(remote, base: str, local: Path, files: dict[str, tuple[int, int]],
               index: dict[str, list[int]]) -> int:
    local.mkdir(parents=True, exist_ok=True)
    mirrored = _local_index(local)
    for relative in set(mirrored) - set(files):  # gone remotely since this mirror last synced
        (local / relative).unlink(missing_ok=True)
    fetched, kept = 0, {}
    for relative, (size, remote_mtime) in sorted(files.items()):
        if relative.startswith("/") or ".." in PurePosixPath(relative).parts:
            raise RemoteError(f"{base}/{relative}: refused, a key that would land outside the mirror {local}")
        entry = index.get(relative)
        mtime = entry[1] if entry and entry[0] == size and entry[2] == remote_mtime else remote_mtime
        path = local / relative
        if not (path.is_file() and path.stat().st_size == size and path.stat().st_mtime_ns == mtime):
            _download(remote, f"{base}/{relative}", path, mtime)
            fetched += 1
        kept[relative] = [size, mtime, remote_mtime]
    _write_local_index(local, kept)
    return fetched


def _download(remote, source: str, path: Path, mtime_ns: int) -> None:
    with atomic_path(path) as tmp, remote.open_input_stream(source) as stream, open(tmp, "wb") as sink:
        while chunk := stream.read(_CHUNK):
            sink.write(chunk)
        sink.close()
        os.utime(tmp, ns=(mtime_ns, mtime_ns))


def _local_index(local: Path) -> dict[str, list[int]]:
    path = local / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_local_index(local: Path, index: dict[str, list[int]]) -> None:
    with atomic_path(local / INDEX) as tmp:
        tmp.write_text(json.dumps(index, sort_keys=True))


def push(local: Path, target: RemotePath) -> int:
    """Upload what changed in the mirror ``local`` to ``target``; return the number of files uploaded."""
    remote, base = filesystem(target.url)
    try:
        current = _remote_files(remote, base)
        index = _read_index(remote, f"{base}/{INDEX}") if INDEX in current else {}
        known = {**_local_index(local), **index}  # what was pulled into, or pushed from, a mirror
        files = dict(_local_files(local))
        for relative in sorted(set(known) - set(files)):  # curate removed it here (a recomputed stage)
            if relative in current:
                remote.delete_file(f"{base}/{relative}")
            index.pop(relative, None)
        uploaded = 0
        for relative in sorted(files, key=_order):
            stat = files[relative].stat()
            entry = known.get(relative)
            if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns] and current.get(relative, (0, -1))[1] == entry[2]:
                index[relative] = entry
                continue
            index[relative] = [stat.st_size, stat.st_mtime_ns, _upload(remote, files[relative], f"{base}/{relative}")]
            uploaded += 1
        with remote.open_output_stream(f"{base}/{INDEX}") as stream:
            stream.write(json.dumps(index, sort_keys=True).encode())
    except OSError as error:
        raise RemoteError(f"{target.url}: upload failed ({error}); the run is complete in {local}, "
                          f"re-run the command to upload it") from error
    _write_local_index(local, index)
    if uploaded:
        log.info("%s: %d changed file(s) uploaded from %s", target.url, uploaded, local)
    return uploaded


def _upload(remote, path: Path, destination: str) -> int:
    """Upload one file; return the remote modification time it got."""
    parent = PurePosixPath(destination).parent.as_posix()
    remote.create_dir(parent, recursive=True)
    with open(path, "rb") as source, remote.open_output_stream(destination) as stream:
        while chunk := source.read(_CHUNK):
            stream.write(chunk)
    return remote.get_file_info(destination).mtime_ns or 0
