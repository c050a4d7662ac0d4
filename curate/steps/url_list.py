"""URL lists as `curate ingest` reads them: parquet, csv or tsv with url and caption columns and,
optionally, ``uid`` and ``sha256``.

Rows without a uid get ``derive_uid(url, caption)`` (DESIGN.md section 2), so re-ingesting gives
the same uids; a repeated uid is an error naming both rows. Text is read as raw bytes and repaired
(U+FFFD) rather than refused, so no row is lost to an encoding error; an expected sha256 is
normalised as img2dataset compares it (lower-case hex; blank means unknown).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from curate.errors import PoolError
from curate.pool import check_uids, parquet_file, repair_text
from curate.uid import derive_uid, uid_pairs

log = logging.getLogger(__name__)

ROW = "input_row"  # the input row index, carried through img2dataset as an additional column
CSV_BLOCK_BYTES = 64 << 20  # a csv row must fit in one block: room for ~1M-character captions


def read_url_list(path: Path, url_col: str, caption_col: str,
                  max_caption_chars: int | None = None) -> tuple[pa.Table, int]:
    """The URL list as a table (input_row, uid, url, caption, sha256) and the count of truncated captions."""
    names, raw = read_table(path, [url_col, caption_col, "uid", "sha256"])
    missing = [name for name in (url_col, caption_col) if name not in names]
    if missing:
        raise PoolError(f"{path}: missing column(s) {missing}; it has {names}")
    if raw.num_rows == 0:
        raise PoolError(f"{path}: empty URL list")
    raw = repair_text(raw, path)
    url, caption = as_text(raw[url_col]), as_text(raw[caption_col])
    uids = as_text(raw["uid"]) if "uid" in raw.column_names else derived_uids(url, caption)
    check_uids(uids, path)
    check_duplicate_uids(uids, path, derived="uid" not in raw.column_names)
    sha256 = expected_hashes(raw["sha256"]) if "sha256" in raw.column_names else pa.nulls(raw.num_rows, pa.string())
    caption, truncated = truncate_captions(caption, max_caption_chars, path)
    table = pa.table({ROW: pa.array(np.arange(raw.num_rows, dtype=np.int64)), "uid": uids, "url": url,
                      "caption": caption, "sha256": sha256})
    return table.combine_chunks(), truncated


def expected_hashes(column: pa.ChunkedArray) -> pa.Array:
    """Input sha256 values as img2dataset compares them (lower-case hex); blank means unknown (null)."""
    hashes = pc.utf8_lower(pc.utf8_trim_whitespace(as_text(column)))
    return pc.if_else(pc.equal(pc.utf8_length(hashes), 0), pa.scalar(None, pa.string()), hashes)


def truncate_captions(caption: pa.Array, max_chars: int | None, path: Path) -> tuple[pa.Array, int]:
    """Cut captions longer than `max_chars` characters (None: keep all), warning with the rows cut."""
    if max_chars is None:
        return caption, 0
    too_long = pc.fill_null(pc.greater(pc.utf8_length(caption), max_chars), False)
    truncated = pc.sum(too_long).as_py() or 0
    if not truncated:
        return caption, 0
    log.warning("%s: %d caption(s) cut to %d characters, first rows %s", path, truncated, max_chars,
                np.flatnonzero(too_long.to_numpy(zero_copy_only=False))[:10].tolist())
    return pc.utf8_slice_codeunits(caption, 0, max_chars), truncated


def read_table(path: Path, wanted: list[str]) -> tuple[list[str], pa.Table]:
    """The file's column names, and the `wanted` columns it has (format by extension)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        file = parquet_file(path)
        names = file.schema_arrow.names
        try:
            return names, file.read(columns=[name for name in wanted if name in names])
        except (pa.ArrowInvalid, OSError) as error:
            raise PoolError(f"{path}: cannot read parquet data ({error})") from error
    if suffix not in (".csv", ".tsv"):
        raise PoolError(f"{path}: unknown URL list format {suffix!r} (use .parquet, .csv or .tsv)")
    if not path.is_file():
        raise PoolError(f"{path}: URL list does not exist")
    if path.stat().st_size == 0:
        raise PoolError(f"{path}: empty URL list")
    return read_delimited(path, "," if suffix == ".csv" else "\t", wanted)


def read_delimited(path: Path, delimiter: str, wanted: list[str]) -> tuple[list[str], pa.Table]:
    """csv (quoted fields may hold newlines) or tsv (no quoting), text kept as raw, unchecked UTF-8."""
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False,
                               newlines_in_values=delimiter == ",")
    try:
        with pacsv.open_csv(path, read, parse, pacsv.ConvertOptions(check_utf8=False)) as reader:
            names = reader.schema.names
        present = [name for name in wanted if name in names]
        if not present:
            return names, pa.table({})
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in present}, check_utf8=False,
                                       include_columns=present, strings_can_be_null=False)
        return names, pacsv.read_csv(path, read, parse, convert)
    except pa.ArrowInvalid as error:
        raise PoolError(f"{path}: cannot parse as {'csv' if delimiter == ',' else 'tsv'} ({error})") from error


def as_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as valid UTF-8 strings; binary values are decoded with U+FFFD replacement."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()],
                        pa.string())
    return column.cast(pa.string())


def derived_uids(url: pa.Array, caption: pa.Array) -> pa.Array:
    return pa.array([derive_uid(u or "", c) for u, c in zip(url.to_pylist(), caption.to_pylist())], pa.string())


def check_duplicate_uids(uids: pa.Array, path: Path, derived: bool) -> None:
    pairs = uid_pairs(uids)
    order = np.argsort(pairs, order=["f0", "f1"], kind="stable")
    repeated = np.flatnonzero(pairs[order][1:] == pairs[order][:-1])
    if len(repeated):
        first, second = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        why = " (same url and caption)" if derived else ""
        raise PoolError(f"{path}: duplicate uid {uids[first].as_py()} in rows {first} and {second}{why}; "
                        f"{len(repeated)} repeated uid(s) in the file")
