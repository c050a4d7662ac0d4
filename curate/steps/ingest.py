"""Ingest a URL list: download it with img2dataset (rom1504/img2dataset) into a parquet pool.

Input is a parquet, csv or tsv file with url and caption columns and, optionally, `uid` and
`sha256`. Rows without a uid get `derive_uid(url, caption)`, so re-ingesting gives the same
uids (DESIGN.md section 2). img2dataset downloads into a temporary folder under `out`; the
pool is then written as one shard per img2dataset shard (`out/00000.parquet`, ...; shard k
holds input rows [k * shard_size, (k + 1) * shard_size)), rows in input order, with
columns uid, url, text, sha256, original_width, original_height, width, height, status,
error_message, jpg. A failed download stays a row with img2dataset's status
("failed_to_download" or "failed_to_resize") and error message, so the pool has exactly the
input's rows (DESIGN.md section 6); if img2dataset loses a row, ingest stops and names it.

img2dataset behaviours this module relies on (1.47):
- rows come back in completion order, not input order: an input row index travels with
  each sample as an additional column and the pool is sorted by it;
- resize_mode "no" still re-encodes unless skip_reencode is set: with it, JPEG bytes are
  kept exactly and other formats are re-encoded to JPEG (the `jpg` column always is JPEG);
- verify_hash fails a row whose expected hash is null ("hash mismatch"), so rows with and
  without an input sha256 are downloaded in two runs, verified and not;
- a failed row has null image, sizes and computed hash; we keep the input sha256 there;
- incremental_mode="overwrite" removes the temporary folder it has just created, so the
  default mode is used, on a fresh folder.
img2dataset runs its workers with the "spawn" start method, so a script calling `ingest`
needs the usual `if __name__ == "__main__":` guard, and it must run in the main thread
(img2dataset installs a SIGINT handler; ours is restored afterwards).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.pool import POOL_INFO, check_uids, parquet_file, repair_text, scan_shards
from curate.errors import PoolError
from curate.runio import atomic_write_json, atomic_write_table, package_versions, read_json
from curate.uid import derive_uid, uid_pairs

log = logging.getLogger(__name__)

ROW = "input_row"  # the input row index, carried through img2dataset as an additional column
WORK_DIR = "_ingest_tmp"
CSV_BLOCK_BYTES = 64 << 20  # a csv row must fit in one block: room for ~1M-character captions
SHARD_NAME = re.compile(r"^\d{5,}\.parquet$")
POOL_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("sha256", pa.string()),
    ("original_width", pa.int64()), ("original_height", pa.int64()), ("width", pa.int64()),
    ("height", pa.int64()), ("status", pa.string()), ("error_message", pa.string()), ("jpg", pa.binary()),
])
RAW_COLUMNS = [ROW, "sha256", "original_width", "original_height", "width", "height", "status",
               "error_message", "jpg"]


def ingest(url_list: Path, out: Path, *, url_col: str = "url", caption_col: str = "caption",
           processes: int = 2, threads: int = 16, resize_mode: str = "no", image_size: int = 512,
           timeout: float = 10.0, retries: int = 0, shard_size: int = 1000,
           max_caption_chars: int | None = None) -> dict:
    """Download `url_list` with img2dataset into the pool directory `out`; returns `_pool.json`."""
    url_list, out = Path(url_list), Path(out)
    inputs, truncated = read_url_list(url_list, url_col, caption_col, max_caption_chars)
    finished = finished_pool(out, url_list, inputs.num_rows)
    if finished is not None:
        log.info("%s already holds the pool of %s (%d rows): skipping", out, url_list, inputs.num_rows)
        return finished
    options = {"processes_count": processes, "thread_count": threads, "resize_mode": resize_mode,
               "image_size": image_size, "timeout": timeout, "retries": retries,
               "number_sample_per_shard": shard_size, "skip_reencode": resize_mode == "no"}
    prepare_out(out, url_list)
    work = out / WORK_DIR
    try:
        raw_dirs = run_downloads(inputs, work, options)
        status_counts = write_pool(inputs, raw_files(raw_dirs, inputs, url_list), out, shard_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"source": str(url_list.resolve()), "format": "img2dataset", "rows": inputs.num_rows,
            "shards": -(-inputs.num_rows // shard_size), "status_counts": dict(sorted(status_counts.items())),
            "columns": POOL_SCHEMA.names, "captions_truncated": truncated,
            "img2dataset": {**options, "rows_with_expected_sha256": pc.count(inputs["sha256"]).as_py()},
            "versions": package_versions()}
    atomic_write_json(info, out / POOL_INFO)
    log.info("ingested %d rows of %s into %s: %s", inputs.num_rows, url_list, out, info["status_counts"])
    return info


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


def finished_pool(out: Path, url_list: Path, rows: int) -> dict | None:
    """The `_pool.json` of a complete earlier ingest of the same URL list into `out`, if any."""
    info_path = out / POOL_INFO
    if not info_path.is_file():
        return None
    info = read_json(info_path)
    if info.get("source") != str(url_list.resolve()) or info.get("rows") != rows:
        return None
    try:
        return info if sum(shard.rows for shard in scan_shards(out)) == rows else None
    except PoolError:
        return None


def prepare_out(out: Path, url_list: Path) -> None:
    """Make `out` ready for a fresh pool of `url_list`, dropping stale shards of an unfinished or older run.

    Refuses a folder holding another source's pool or parquet files ingest did not write.
    """
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / POOL_INFO
    if info_path.is_file() and read_json(info_path).get("source") != str(url_list.resolve()):
        raise PoolError(f"{out}: holds the pool of {read_json(info_path).get('source')}, not of {url_list}; "
                        "use an empty folder")
    foreign = [p.name for p in out.glob("*.parquet") if not SHARD_NAME.match(p.name)]
    if foreign:
        raise PoolError(f"{out}: holds parquet files that are not ingest shards {foreign[:5]}; use an empty folder")
    info_path.unlink(missing_ok=True)
    for stale in out.glob("*.parquet"):
        stale.unlink()
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def run_downloads(inputs: pa.Table, work: Path, options: dict) -> list[Path]:
    """Run img2dataset; twice when only some rows have an expected sha256 (it fails null hashes)."""
    has_hash = pc.is_valid(inputs["sha256"])
    hashed = pc.sum(has_hash).as_py() or 0
    runs = [("verified", has_hash, True)] if hashed else []
    if hashed < inputs.num_rows:
        runs.append(("unverified", pc.invert(has_hash), False))
    work.mkdir(parents=True, exist_ok=True)
    for name, rows, verify in runs:
        source = work / f"{name}.parquet"
        pq.write_table(inputs.filter(rows), source)
        run_img2dataset(source, work / name, verify, options)
        source.unlink()
    return [work / name for name, _, _ in runs]


def run_img2dataset(source: Path, folder: Path, verify: bool, options: dict) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its workers would check for updates online
    import img2dataset

    previous = signal.getsignal(signal.SIGINT)
    try:  # incremental_mode stays the default: "overwrite" deletes the _tmp folder it has just made
        img2dataset.download(
            url_list=str(source), output_folder=str(folder), input_format="parquet", output_format="parquet",
            url_col="url", caption_col="caption", save_additional_columns=["uid", ROW], compute_hash="sha256",
            verify_hash=["sha256", "sha256"] if verify else None, encode_format="jpg", extract_exif=False,
            enable_wandb=False, distributor="multiprocessing", **options)
    finally:
        signal.signal(signal.SIGINT, previous)


def raw_files(raw_dirs: list[Path], inputs: pa.Table, url_list: Path) -> list[tuple[Path, int, int]]:
    """img2dataset's output files with the first and last input row each holds; every row once."""
    files, seen = [], []
    for path in sorted(p for folder in raw_dirs for p in folder.glob("*.parquet")):
        try:
            rows = pq.read_table(path, columns=[ROW]).column(ROW).to_numpy()
        except (pa.ArrowInvalid, OSError) as error:
            log.warning("%s: img2dataset output unreadable, its rows count as lost (%s)", path, error)
            continue
        if len(rows):
            files.append((path, int(rows.min()), int(rows.max())))
            seen.append(rows)
    counts = np.bincount(np.concatenate(seen) if seen else np.zeros(0, np.int64), minlength=inputs.num_rows)
    lost, repeated = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    if len(lost) or len(repeated):
        urls = inputs["url"].take(pa.array(lost[:5])).to_pylist()
        raise PoolError(f"{url_list}: img2dataset lost {len(lost)} of {inputs.num_rows} rows (first rows "
                        f"{lost[:10].tolist()}, urls {urls}) and returned {len(repeated)} row(s) twice "
                        f"{repeated[:10].tolist()}; nothing was written")
    return files


def write_pool(inputs: pa.Table, files: list[tuple[Path, int, int]], out: Path, shard_size: int) -> Counter:
    """Pool shard k = input rows [k * shard_size, (k + 1) * shard_size), joined to the download results."""
    status_counts: Counter = Counter()
    shards = -(-inputs.num_rows // shard_size)
    for index in tqdm(range(shards), desc="write pool", unit="shard"):
        low, high = index * shard_size, min(inputs.num_rows, (index + 1) * shard_size)
        raw = [pq.read_table(path, columns=RAW_COLUMNS, filters=[(ROW, ">=", low), (ROW, "<", high)])
               for path, first, last in files if first < high and last >= low]
        shard = pool_shard(inputs.slice(low, high - low), pa.concat_tables(raw, promote_options="permissive"))
        counted = pc.value_counts(shard["status"])
        status_counts.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
        atomic_write_table(shard, out / f"{index:05d}.parquet")
    return status_counts


def pool_shard(inputs: pa.Table, raw: pa.Table) -> pa.Table:
    """Input rows (uid, url, caption, expected sha256) joined with img2dataset's results, in input order."""
    raw = raw.sort_by(ROW).combine_chunks()
    if not raw[ROW].equals(inputs[ROW]):
        raise AssertionError("img2dataset results do not cover the shard's input rows")
    sizes = {name: raw[name].cast(pa.int64()) for name in ("original_width", "original_height", "width", "height")}
    return pa.table({"uid": inputs["uid"], "url": inputs["url"], "text": inputs["caption"],
                     "sha256": pc.coalesce(raw["sha256"], inputs["sha256"]), **sizes, "status": raw["status"],
                     "error_message": raw["error_message"], "jpg": raw["jpg"]}, schema=POOL_SCHEMA)
