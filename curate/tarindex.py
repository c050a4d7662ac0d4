"""Pools whose images stay in webdataset tar shards (img2dataset's and DataComp's layout), read in place.

A pool's parquet shards may lack the image bytes column (``jpg``) when the images are in tars: beside
the shards (``00000.parquet`` + ``00000.tar``: what img2dataset's webdataset output and ``curate ingest
--output-format webdataset`` write) or anywhere else, linked by uid (a DataComp download directory's
``shards/``, through ``curate import-datacomp``). The link is an index kept in the pool, built once:

    POOL/images/_sources.json       what it is built from (each tar + its parquet), written first
    POOL/images/_manifest.json      written last: the image column, the tars (path relative to the
                                    pool, size, mtime), the shards (size, mtime) and the sources
    POOL/images/<shard>.parquet     row-aligned with POOL/<shard>.parquet: uid, tar (a position in
                                    the manifest's list), offset, size of the image member's data;
                                    null where the sample has no image (a failed download)

Building (``build_index``) reads only tar headers and the (uid, key) columns of each tar's parquet
(img2dataset writes one per tar; without a ``key`` column the key is the uid). Refused, naming the
files: a member whose key has no row in its tar's parquet, a row whose status is ``success`` (or
that has no status) with no member, a uid in two tars, plus what ``curate.tarfiles.scan_members``
refuses (truncated tars, absolute or ``..`` member names, links).

Reading (``read_images``): a shard's image column is the bytes at its rows' locations, one open file
per tar, reads in offset order: nothing is copied into the pool. A tar whose size or modification time
differs from the manifest's is refused at read time (it changed after indexing); ``ensure_index``,
which every scan of a complete pool calls once, rebuilds a stale or missing index from its sources
before any stage plans, so a changed tar changes the fingerprints of the stages that read images.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import PoolError
from curate.fingerprint import digest, file_signature
from curate.progress import Progress
from curate.runio import atomic_write_json, atomic_write_table, read_json
from curate.tarfiles import read_members, scan_members

log = logging.getLogger(__name__)

INDEX_DIR = "images"
MANIFEST = "_manifest.json"
SOURCES = "_sources.json"  # what the index is built from, written before its parts
IMAGE_COLUMN = "jpg"
LOCATION_COLUMNS = ("_tar", "_offset", "_size")  # the index's columns as the Spark engine joins them
SUCCESS = "success"
INDEX_SCHEMA = pa.schema([("uid", pa.string()), ("tar", pa.int32()), ("offset", pa.int64()), ("size", pa.int64())])


def _relative(path: Path, pool_dir: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path(pool_dir).resolve())
    except ValueError:  # another drive
        return str(Path(path).resolve())


def tar_stat(path: Path) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def beside_sources(shards: list[Path]) -> list[tuple[Path, Path]]:
    """(tar, parquet) for every pool shard (a parquet path) with a tar of the same name beside it."""
    return [(p.with_suffix(".tar"), p) for p in shards if p.with_suffix(".tar").is_file()]


def tar_locations(tar: Path, parquet: Path, extension: str) -> pl.DataFrame:
    """uid, offset, size of the image members of ``tar``, linked through its parquet's (uid, key)."""
    members = scan_members(tar, extension)
    names = pq.read_schema(parquet).names
    if "uid" not in names:
        raise PoolError(f"{parquet}: no 'uid' column: its tar {tar.name} cannot be linked to the pool by uid")
    meta = pl.read_parquet(parquet, columns=[c for c in ("uid", "key", "status") if c in names])
    keys = meta["key"].cast(pl.Utf8) if "key" in names else meta["uid"]
    found = pl.DataFrame({"key": list(members), "offset": [m[0] for m in members.values()],
                          "size": [m[1] for m in members.values()]},
                         schema={"key": pl.Utf8, "offset": pl.Int64, "size": pl.Int64})
    rows = pl.DataFrame({"uid": meta["uid"], "key": keys,
                         "ok": meta["status"] == SUCCESS if "status" in names else pl.Series([True] * meta.height)})
    orphans = found.join(rows, on="key", how="anti")
    if orphans.height:
        raise PoolError(f"{tar}: member {orphans['key'][0]}.{extension} has no row in {parquet} "
                        f"({orphans.height} such member(s)); the tar and its parquet do not belong together")
    linked = rows.with_row_index("row").join(found, on="key", how="left")
    missing = linked.filter(pl.col("ok") & pl.col("offset").is_null())
    if missing.height:
        first = missing.row(0, named=True)
        raise PoolError(f"{parquet} row {first['row']}: uid {first['uid']} has status success but {tar} has no "
                        f"member {first['key']}.{extension} ({missing.height} such row(s)); a truncated or "
                        f"replaced tar? re-download it")
    return linked.filter(pl.col("offset").is_not_null()).select("uid", "offset", "size")


def build_index(pool_dir: Path, sources: list[tuple[Path, Path]], shards: list[Path], *, image_column: str = IMAGE_COLUMN,
                extension: str = "jpg", origin: str = "beside") -> dict:
    """Index the image members of ``sources`` (tar, its parquet) for the pool's ``shards`` (parquet paths)."""
    pool_dir = Path(pool_dir)
    pieces = []
    with Progress("index tar images", len(sources), "tar") as progress:
        for number, (tar, parquet) in enumerate(sources):
            pieces.append(tar_locations(tar, parquet, extension).with_columns(pl.lit(number, pl.Int32).alias("tar")))
            progress.update()
    locations = (pl.concat(pieces) if pieces else
                 pl.DataFrame(schema={"uid": pl.Utf8, "offset": pl.Int64, "size": pl.Int64, "tar": pl.Int32}))
    repeated = locations.filter(pl.col("uid").is_duplicated())
    if repeated.height:
        uid = repeated["uid"][0]
        tars = [str(sources[t][0]) for t in repeated.filter(pl.col("uid") == uid)["tar"]]
        raise PoolError(f"uid {uid} has an image in more than one tar: {tars}")
    out = pool_dir / INDEX_DIR
    (out / MANIFEST).unlink(missing_ok=True)  # parts of two builds never pass for one index: the manifest comes last
    _load.cache_clear()
    recipe = {"image_column": image_column, "extension": extension, "origin": origin,
              "sources": [[_relative(tar, pool_dir), _relative(parquet, pool_dir)] for tar, parquet in sources]}
    atomic_write_json(recipe, out / SOURCES)  # first: a build killed midway is redone from it
    linked_per_shard = {}
    for shard in shards:
        uids = pl.read_parquet(shard, columns=["uid"])
        part = uids.join(locations, on="uid", how="left", maintain_order="left").select("uid", "tar", "offset", "size")
        atomic_write_table(part.to_arrow().cast(INDEX_SCHEMA), out / f"{shard.stem}.parquet")
        linked_per_shard[shard.stem] = {"images": part["tar"].count(), **tar_stat(shard)}
    linked = sum(entry["images"] for entry in linked_per_shard.values())
    if linked < locations.height:
        log.warning("%s: %d image(s) in the tars have a uid that is in no pool shard; they are not part of the pool",
                    pool_dir, locations.height - linked)
    manifest = {"status": "complete", **recipe, "tars": [{"path": _relative(tar, pool_dir), **tar_stat(tar)} for tar, _ in sources],
                "images": linked, "shards": linked_per_shard}
    atomic_write_json(manifest, out / MANIFEST)
    log.info("%s: indexed %d images in %d tar(s) for %d pool shard(s)", pool_dir, linked, len(sources), len(shards))
    _load.cache_clear()
    return manifest


def load_index(pool_dir: Path) -> dict | None:
    path = Path(pool_dir) / INDEX_DIR / MANIFEST
    if not path.is_file():
        return None
    stat = path.stat()
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int, size: int) -> dict:
    manifest = read_json(path)
    return manifest if manifest.get("status") == "complete" else None


def stale_reason(pool_dir: Path, manifest: dict, shards: list[Path]) -> str | None:
    for tar in manifest["tars"]:
        path = Path(pool_dir) / tar["path"]
        if not path.is_file():
            return f"{path} is gone"
        if tar_stat(path) != {"size": tar["size"], "mtime_ns": tar["mtime_ns"]}:
            return f"{path} changed"
    now = {p.stem: tar_stat(p) for p in shards}
    if now != {stem: {"size": e["size"], "mtime_ns": e["mtime_ns"]} for stem, e in manifest["shards"].items()}:
        return "the pool's shards changed"
    if manifest["origin"] == "beside" and len(beside_sources(shards)) != len(manifest["tars"]):
        return "tars were added beside the shards"
    return None


def ensure_index(pool_dir: Path, shards: list[Path]) -> dict | None:
    """The index of the pool with parquet ``shards``: built if tars lie beside them and there is none,
    rebuilt if stale."""
    try:
        return _ensure(Path(pool_dir), shards)
    except OSError as error:
        raise PoolError(f"{pool_dir}: cannot write its tar index into {Path(pool_dir) / INDEX_DIR} ({error}); the "
                        f"images of a webdataset pool are read through it, so the pool directory must be writable "
                        f"once") from error


def _ensure(pool_dir: Path, shards: list[Path]) -> dict | None:
    manifest = load_index(pool_dir)
    unfinished = pool_dir / INDEX_DIR / SOURCES
    if manifest is None and unfinished.is_file():
        manifest, reason = read_json(unfinished), "a build of it did not finish"
    elif manifest is None:
        sources = beside_sources(shards)
        if not sources:
            return None
        log.info("%s: its images are in %d tar shard(s); indexing them once (%s/)", pool_dir, len(sources), INDEX_DIR)
        return build_index(pool_dir, sources, shards)
    else:
        reason = stale_reason(pool_dir, manifest, shards)
        if reason is None:
            return manifest
    log.warning("%s: the tar index is stale (%s); rebuilding it", pool_dir, reason)
    return build_index(pool_dir, _sources(pool_dir, manifest, shards), shards, image_column=manifest["image_column"],
                       extension=manifest["extension"], origin=manifest["origin"])


def _sources(pool_dir: Path, manifest: dict, shards: list[Path]) -> list[tuple[Path, Path]]:
    if manifest["origin"] == "beside":
        return beside_sources(shards)
    return [(pool_dir / tar, pool_dir / parquet) for tar, parquet in manifest["sources"]]


def image_column(pool_dir: Path) -> str | None:
    """The column this pool keeps in tars, or None."""
    manifest = load_index(pool_dir)
    return manifest["image_column"] if manifest else None


def index_files(pool_dir: Path) -> list[Path]:
    """The index's files (manifest first; it records the tars' sizes and times), or none."""
    directory = Path(pool_dir) / INDEX_DIR
    if load_index(pool_dir) is None:
        return []
    return [directory / MANIFEST, *sorted(directory.glob("*.parquet"))]


def index_signature(pool_dir: Path) -> str:
    """What a stage reading the tar images depends on: the index's files (its manifest records the
    tars' sizes and times)."""
    return digest([file_signature(path) for path in index_files(pool_dir)])


def read_locations(pool_dir: Path, stem: str, uids: pa.ChunkedArray | pa.Array,
                   rows: np.ndarray | None = None) -> pa.Table:
    """The index rows (uid, tar, offset, size) of pool shard ``stem`` (its rows ``rows``), checked to be
    the rows of ``uids``."""
    path = Path(pool_dir) / INDEX_DIR / f"{stem}.parquet"
    try:
        part = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise PoolError(f"{path}: cannot read the tar index ({error}); delete {path.parent} to rebuild it") from error
    if rows is not None:
        part = part.take(pa.array(rows))
    expected = (pa.chunked_array([uids]) if isinstance(uids, pa.Array) else uids).cast(pa.string())
    if not part.column("uid").equals(expected):
        raise PoolError(f"{path}: its uids are not those of pool shard {stem}; delete {path.parent} to rebuild it")
    return part


def read_images(pool_dir: Path, tars: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                ) -> pa.Array:
    """The image bytes at (tar, offset, size) per row; null where tar is negative (no image)."""
    manifest = load_index(pool_dir)
    values: list[bytes | None] = [None] * len(tars)
    for number in np.unique(tars[tars >= 0]):
        entry = manifest["tars"][number]
        path = Path(pool_dir) / entry["path"]
        try:
            now = tar_stat(path)
        except OSError as error:
            raise PoolError(f"{path}: the tar indexed for {pool_dir} cannot be read ({error})") from error
        if now != {"size": entry["size"], "mtime_ns": entry["mtime_ns"]}:
            raise PoolError(f"{path}: changed after {pool_dir}/{INDEX_DIR} indexed it (size {entry['size']} -> "
                            f"{now['size']}); re-run the command, which re-indexes it first")
        rows = np.flatnonzero(tars == number)
        for row, data in zip(rows, read_members(path, offsets[rows], sizes[rows])):
            values[row] = data
    return pa.array(values, pa.binary())


def images_of(pool_dir: Path, locations: pa.Table) -> pa.Array:
    """The image column for index rows ``locations`` (columns tar, offset, size)."""
    tars = locations.column("tar").fill_null(-1).to_numpy().astype(np.int64)
    offsets = locations.column("offset").fill_null(0).to_numpy()
    sizes = locations.column("size").fill_null(0).to_numpy()
    return read_images(pool_dir, tars, offsets, sizes)
