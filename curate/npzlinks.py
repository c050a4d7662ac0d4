"""Embedding sidecars linked to DataComp's npz files instead of copied (``import-datacomp
--link-embeddings``): the arrays are read in place, so importing a pool adds its metadata, not
another copy of its embeddings (DataComp small ships ~75 GB of npz).

An npz is a zip archive of ``.npy`` members. ``np.savez`` (DataComp's writer) STORES them
uncompressed, so a member's bytes are its ``.npy`` header followed by the array itself: the
float16 rows of curate's sidecar format (curate.kernels.embeddings), bit for bit. A linked sidecar
directory holds ``_links.json``: per part, the npz, its signature at import, the pool shard whose
rows it aligns with, and per column (image_emb, text_emb) the offset of the array bytes in the
file, its rows and width. Reading a part memory-maps those bytes (``np.memmap``) and wraps them as
Arrow ``fixed_size_binary`` without a copy; ``uid`` comes from the pool shard.

A member that is compressed (``np.savez_compressed``), not float16 or Fortran-ordered cannot be
mapped: that part is copied into ``part-NNNNN.parquet`` as without linking, and a part file, when
present, is what readers use. A linked npz that changed after the import is an error naming it
(the engines also sign the npz files, so nothing stale is reused).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import PoolError
from curate.fingerprint import file_signature
from curate.runio import atomic_write_json, read_json

LINKS = "_links.json"
COLUMNS = {"image_emb": "img", "text_emb": "txt"}
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def member_data(npz: Path, member: str) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(offset of the array's bytes in the file, shape, dtype) of a stored, C-ordered member; None
    when it cannot be mapped (compressed or Fortran-ordered)."""
    with zipfile.ZipFile(npz) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(npz, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if local[:4] != b"PK\x03\x04":
            raise PoolError(f"{npz}: member {member}: no zip local header at offset {info.header_offset}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version not in _HEADERS:
            return None
        shape, fortran, dtype = _HEADERS[version](handle)
        offset = handle.tell()
    return None if fortran else (offset, shape, dtype)


def link_entry(npz: Path, model: str, shard: Path) -> dict | None:
    """The ``_links.json`` entry of one shard's ``model`` arrays, or None when they cannot be mapped."""
    columns = {}
    for column, kind in COLUMNS.items():
        found = member_data(npz, f"{model}_{kind}.npy")
        if found is None or found[2] != np.dtype("<f2") or len(found[1]) != 2:
            return None
        offset, (rows, dim), _ = found
        columns[column] = {"offset": offset, "rows": rows, "dim": dim}
    return {"npz": str(npz.resolve()), "signature": file_signature(npz), "shard": shard.name, "columns": columns}


def write_links(directory: Path, parts: dict[str, dict]) -> None:
    atomic_write_json({"parts": parts}, directory / LINKS)


def links(directory: Path) -> dict[str, dict]:
    """part name -> link entry of a linked sidecar ({} for a copied one)."""
    path = Path(directory) / LINKS
    return read_json(path)["parts"] if path.is_file() else {}


def part_names(directory: Path) -> list[str]:
    """The sidecar's parts, copied or linked, in order."""
    copied = {path.stem for path in Path(directory).glob("part-*.parquet")}
    return sorted(copied | set(links(directory)))


def part_signatures(directory: Path) -> dict[str, str]:
    """What a stage reading the sidecar is fingerprinted by: each part file, or its linked npz."""
    directory, linked = Path(directory), links(directory)
    found = {}
    for part in part_names(directory):
        path = directory / f"{part}.parquet"
        if not path.is_file() and not Path(linked[part]["npz"]).is_file():
            raise PoolError(f"{linked[part]['npz']}: missing; {directory} reads its embeddings in place from it "
                            f"(import-datacomp --link-embeddings): restore it, or import again")
        found[f"{part}.parquet" if path.is_file() else f"{part} -> {Path(linked[part]['npz']).name}"] = \
            file_signature(path if path.is_file() else linked[part]["npz"])
    return found


def read_part(directory: Path, part: str, columns: list[str]) -> pa.Table:
    """Columns of one sidecar part: its parquet file, or the linked npz arrays mapped in place."""
    directory = Path(directory)
    path = directory / f"{part}.parquet"
    linked = {} if path.is_file() else links(directory)
    if part not in linked:
        return pq.read_table(path, columns=columns)
    entry = linked[part]
    npz = Path(entry["npz"])
    if not npz.is_file() or file_signature(npz) != entry["signature"]:
        raise PoolError(f"{npz}: {'missing' if not npz.is_file() else 'changed'} since it was linked into "
                        f"{directory}; run import-datacomp again")
    arrays = {}
    for column in columns:
        if column == "uid":
            arrays["uid"] = pq.read_table(directory.parents[1] / entry["shard"], columns=["uid"]).column("uid")
            continue
        spec = entry["columns"][column]
        width = 2 * spec["dim"]
        data = np.memmap(npz, dtype=np.uint8, mode="r", offset=spec["offset"], shape=(spec["rows"] * width,))
        arrays[column] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), spec["rows"], [None, pa.py_buffer(data)])
    return pa.table(arrays)
