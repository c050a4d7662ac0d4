"""Tar shards as webdataset writes them (KEY.jpg, KEY.txt, KEY.json): listing members, reading them in
place, writing them with deterministic bytes.

- ``scan_members``: one pass over a tar's headers (Python's tarfile: ustar, GNU long names, pax), data
  skipped by seeking; returns key -> (data offset, size) of the members with the wanted extension.
  A webdataset key is the member path up to the first "." of its last component (``a/b.c.jpg`` ->
  ``a/b``, extension ``c.jpg``: webdataset's own split). Refused, naming the tar and the member: an
  absolute path, a ``..`` component, an image member that is not a regular file (a link would point
  outside the tar), a key twice, a member whose data runs past the end of the file (a tar truncated
  mid-member), a header that cannot be read.
- ``read_members``: the bytes at (offset, size) pairs of one tar, read in offset order with one open
  file; a short read is an error naming the tar.
- ``tar_header`` / ``write_tar``: a tar exactly as tarfile writes it in ustar format for members with
  default headers (mtime 0, uid/gid 0, mode 0644, no owner names), built directly (tarfile's own
  header code costs more than everything else in a shard writer), so the same members give the same
  bytes whichever process or engine writes them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from curate.errors import PoolError


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, webdataset's way: the split is at the first "." of the
    last path component."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension if dot else ""


def check_member_name(tar: Path, name: str) -> None:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise PoolError(f"{tar}: member {name!r} has an absolute or parent-directory path; refused "
                        f"(curate never extracts, but such a tar is not a webdataset shard)")


def scan_members(tar: Path, extension: str = "jpg") -> dict[str, tuple[int, int]]:
    """key -> (offset of the data, size) for every ``KEY.<extension>`` member of ``tar``."""
    tar = Path(tar)
    try:
        file_size = tar.stat().st_size
        found: dict[str, tuple[int, int]] = {}
        with tarfile.open(tar, mode="r:") as archive:
            for info in archive:
                check_member_name(tar, info.name)
                key, ext = member_key(info.name)
                if ext != extension or info.isdir():
                    continue
                if not info.isreg():
                    raise PoolError(f"{tar}: member {info.name!r} is a link or device, not a file; refused")
                if info.offset_data + info.size > file_size:
                    raise PoolError(f"{tar}: truncated mid-member: {info.name!r} needs bytes up to "
                                    f"{info.offset_data + info.size} but the file has {file_size}")
                if key in found:
                    raise PoolError(f"{tar}: member key {key!r} appears twice")
                found[key] = (info.offset_data, info.size)
    except tarfile.TarError as error:
        raise PoolError(f"{tar}: not a readable tar file ({error})") from error
    except OSError as error:
        raise PoolError(f"{tar}: cannot read it ({error})") from error
    return found


def read_members(tar: Path, offsets: np.ndarray, sizes: np.ndarray) -> list[bytes]:
    """The bytes of each (offset, size) of ``tar``, in the order given. When the members asked for
    fill at least half of the range they span (a whole shard, say), the range is read in one call
    and sliced; otherwise each member is read at its offset."""
    order = np.argsort(offsets, kind="stable")
    result: list[bytes] = [b""] * len(order)
    if not len(order):
        return result
    low, high = int(offsets.min()), int((offsets + sizes).max())
    try:
        with open(tar, "rb", buffering=0) as handle:
            if 2 * int(sizes.sum()) >= high - low:
                handle.seek(low)
                span = handle.read(high - low)
                if len(span) != high - low:
                    raise PoolError(f"{tar}: truncated: bytes {low}..{high} were indexed, the file ends at "
                                    f"{low + len(span)}")
                view = memoryview(span)
                return [bytes(view[int(o) - low:int(o) - low + int(z)]) for o, z in zip(offsets, sizes)]
            for index in order:
                handle.seek(int(offsets[index]))
                data = handle.read(int(sizes[index]))
                if len(data) != sizes[index]:
                    raise PoolError(f"{tar}: truncated: {sizes[index]} bytes at offset {offsets[index]} were "
                                    f"indexed, {len(data)} are there")
                result[index] = data
    except OSError as error:
        raise PoolError(f"{tar}: cannot read it ({error})") from error
    return result


# A ustar header as tarfile writes it for a regular file with mode 0644, uid/gid 0, no owner
# names, mtime 0; per member only the name, the size and the checksum change.
_HEADER = bytearray(tarfile.TarInfo("").tobuf(tarfile.USTAR_FORMAT))


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a member ``name`` (ASCII, < 100 characters) of ``size`` bytes."""
    header = bytearray(_HEADER)
    encoded = name.encode("ascii")
    if len(encoded) >= 100:
        raise ValueError(f"tar member name too long: {name!r}")
    header[:len(encoded)] = encoded
    header[124:136] = b"%011o\0" % size
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def member_bytes(name: str, data: bytes) -> bytes:
    """One member: header, data, zero padding to the 512-byte block."""
    return tar_header(name, len(data)) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def end_of_archive(written: int) -> bytes:
    """The end-of-archive marker and the padding to tarfile's record size, after ``written`` bytes."""
    return bytes(2 * tarfile.BLOCKSIZE + (-(written + 2 * tarfile.BLOCKSIZE) % tarfile.RECORDSIZE))


def write_tar(handle, members: Iterable[tuple[str, bytes]]) -> None:
    """Write ``members`` (name, data) and the end marker to the open binary file ``handle``."""
    written = 0
    for name, data in members:
        chunk = member_bytes(name, data)
        handle.write(chunk)
        written += len(chunk)
    handle.write(end_of_archive(written))
