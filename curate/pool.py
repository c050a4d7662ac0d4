"""The pool format (DESIGN.md section 2): a directory of parquet shards, one row per sample.

Shards are the `*.parquet` files directly inside the pool directory, in name order; a shard's
index in that order is its partition number. Subdirectories hold sidecars (e.g.
`embeddings/<model>/`), never shards. `uid` is the only required column and the only join key.
A pool may keep its image column in webdataset tars instead (curate.tarindex): `scan_shards`
indexes them (once) into `images/`, and `read_shard` / `shard_columns` show that column as if the
parquet had it.

Structural problems stop with a `PoolError` naming the file (and row where there is one):
a missing directory, no shards, an unreadable (e.g. truncated) parquet file, a missing
column, a malformed or duplicate uid. An empty shard is allowed and yields no rows.
Invalid UTF-8 in a text column is repaired (U+FFFD) with a warning naming the file and
rows, so a sample is never lost to an encoding error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import tarindex
from curate.errors import PoolError
from curate.uid import malformed_uid_rows, uid_pairs

log = logging.getLogger(__name__)

POOL_INFO = "_pool.json"


@dataclass(frozen=True)
class Shard:
    index: int
    path: Path
    rows: int

    @property
    def part(self) -> str:
        return f"part-{self.index:05d}"


def list_shards(pool_dir: str | Path) -> list[Path]:
    pool_dir = Path(pool_dir)
    if not pool_dir.is_dir():
        raise PoolError(f"{pool_dir}: pool directory does not exist")
    shards = sorted(p for p in pool_dir.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not shards:
        raise PoolError(f"{pool_dir}: empty pool, no *.parquet shards in it")
    return shards


def parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise PoolError(f"{path}: not a readable parquet file ({error})") from error


def shard_schema(path: Path) -> pa.Schema:
    """A shard's columns as stages see them: its parquet's, plus the image column when the pool keeps
    it in tar shards (curate.tarindex)."""
    schema = parquet_file(path).schema_arrow
    virtual = tarindex.image_column(Path(path).parent)
    return schema.append(pa.field(virtual, pa.binary())) if virtual and virtual not in schema.names else schema


def shard_columns(path: Path) -> list[str]:
    return shard_schema(path).names


def scan_shards(pool_dir: str | Path, *, complete: bool = True) -> list[Shard]:
    """The pool's shards with their row counts, read from parquet footers only; with ``complete``,
    checked against the pool manifest (``check_complete``)."""
    shards = [Shard(i, path, parquet_file(path).metadata.num_rows) for i, path in enumerate(list_shards(pool_dir))]
    if complete:
        check_complete(Path(pool_dir), shards)
        tarindex.ensure_index(Path(pool_dir), [shard.path for shard in shards])
    return shards


def check_complete(pool_dir: Path, shards: list[Shard]) -> None:
    """A pool curate wrote (ingest, import-datacomp) carries POOL_INFO, written first with status
    "writing" and last with "complete" and its shard list: an unfinished pool, or one whose shards
    differ from that list, is refused. A pool without POOL_INFO (made by other tools) is taken
    as it is."""
    path = pool_dir / POOL_INFO
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    if info.get("status", "complete") != "complete":
        raise PoolError(f"{pool_dir}: incomplete pool: `curate {info.get('command', 'ingest')}` did not finish "
                        f"writing it ({len(shards)} shard(s) so far); re-run that command to complete it")
    expected = info.get("shard_files")
    if expected is None:
        return
    found = {shard.path.name: shard.rows for shard in shards}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        changed = sorted(name for name in set(found) & set(expected) if found[name] != expected[name])
        raise PoolError(f"{pool_dir}: its shards differ from {POOL_INFO} (missing {missing[:5]}, not listed "
                        f"{extra[:5]}, other row counts {changed[:5]}); the pool was changed after it was written")


def pool_info(pool_dir: Path) -> dict | None:
    path = Path(pool_dir) / POOL_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def read_shard(path: Path, columns: list[str] | None = None, rows: np.ndarray | None = None) -> pa.Table:
    """Read columns (None: all) of one shard, or of its rows ``rows`` only, checking that they exist and
    that uids are well formed. An image column the pool keeps in tar shards is read from the tars
    (only for ``rows``, when given), after the parquet columns."""
    file = parquet_file(path)
    names = file.schema_arrow.names
    virtual = tarindex.image_column(Path(path).parent)
    from_tars = virtual is not None and virtual not in names and (columns is None or virtual in columns)
    if columns is not None:
        missing = [c for c in columns if c not in names and not (from_tars and c == virtual)]
        if missing:
            raise PoolError(f"{path}: missing required column(s) {missing}; it has {shard_columns(path)}")
    wanted = None if columns is None else [c for c in columns if c != virtual or not from_tars]
    if from_tars and wanted is not None and "uid" not in wanted:
        wanted = ["uid", *wanted]
    try:
        table = file.read(columns=wanted)
    except (pa.ArrowInvalid, OSError) as error:
        raise PoolError(f"{path}: cannot read parquet data ({error})") from error
    if rows is not None:
        table = table.take(pa.array(rows, pa.int64()))
    if "uid" in table.column_names:
        check_uids(table.column("uid"), path)
    if from_tars:
        locations = tarindex.read_locations(path.parent, path.stem, table.column("uid"), rows)
        table = table.append_column(pa.field(virtual, pa.binary()), tarindex.images_of(path.parent, locations))
        table = table.select(columns) if columns is not None else table
    return repair_text(table, path)


def check_uids(uids: pa.ChunkedArray, path: Path) -> None:
    bad = malformed_uid_rows(uids)
    if len(bad):
        row = int(bad[0])
        raise PoolError(
            f"{path} row {row}: malformed uid {uids[row].as_py()!r} "
            f"(need 32 lower-case hex characters; {len(bad)} bad row(s) in this file)"
        )


def repair_text(table: pa.Table, path: Path) -> pa.Table:
    for index, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(index)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = column.cast(pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary(), safe=False)
        fixed, bad_rows = [], []
        for row, value in enumerate(raw.to_pylist()):
            if value is None:
                fixed.append(None)
                continue
            try:
                fixed.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                fixed.append(value.decode("utf-8", "replace"))
                bad_rows.append(row)
        log.warning("%s column %r: invalid UTF-8 replaced by U+FFFD in rows %s", path, field.name, bad_rows[:10])
        table = table.set_column(index, field, pa.array(fixed, field.type))
    return table


def check_unique_uids(pool_dir: str | Path) -> int:
    """Scan every shard's uid column; raise naming both places of the first duplicate uid."""
    shards = scan_shards(pool_dir, complete=False)
    pairs, places = [], []
    for shard in shards:
        uids = read_shard(shard.path, ["uid"]).column("uid")
        pairs.append(uid_pairs(uids))
        places.append(np.stack([np.full(len(uids), shard.index), np.arange(len(uids))], axis=1))
    if not pairs:
        return 0
    all_pairs = np.concatenate(pairs)
    order = np.argsort(all_pairs, order=["f0", "f1"], kind="stable")
    sorted_pairs = all_pairs[order]
    repeated = np.flatnonzero(sorted_pairs[1:] == sorted_pairs[:-1])
    if len(repeated):
        all_places = np.concatenate(places)
        (s1, r1), (s2, r2) = all_places[order[repeated[0]]], all_places[order[repeated[0] + 1]]
        raise PoolError(
            f"duplicate uid: {shards[s2].path} row {r2} repeats the uid of {shards[s1].path} row {r1} "
            f"({len(repeated)} repeated uid(s) in the pool)"
        )
    return len(all_pairs)


def _type_family(kind: pa.DataType) -> str:
    """Arrow types that read back as the same column: (large_)string, (large_)binary; else the type."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    return str(kind)


def check_pool_schema(shards: list[Shard]) -> None:
    """Every shard must have the first shard's columns with the same types (an all-null column, as
    an empty writer may leave, fits any type); else a PoolError naming both files and the column."""
    first = parquet_file(shards[0].path).schema_arrow
    expected = {field.name: field.type for field in first}
    for shard in shards[1:]:
        schema = parquet_file(shard.path).schema_arrow
        names = set(schema.names)
        if names != set(expected):
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            raise PoolError(f"{shard.path}: its columns differ from {shards[0].path} (missing {missing}, extra {extra}); "
                            f"every shard of a pool has the same columns")
        for field in schema:
            other = expected[field.name]
            if pa.types.is_null(field.type) or pa.types.is_null(other) or _type_family(field.type) == _type_family(other):
                continue
            raise PoolError(f"{shard.path}: column {field.name!r} is {field.type} but {other} in {shards[0].path}; "
                            f"every shard of a pool has the same column types")
