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

``output_format="webdataset"`` writes the same pool with the image bytes in ``NNNNN.tar`` beside each
shard instead of its ``jpg`` column (curate.steps.pool_tars; read in place through curate.tarindex).

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
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.errors import PoolError, RunDirError
from curate.outputs import claim, directory_lock
from curate.pool import POOL_INFO, pool_info, scan_shards
from curate.runio import atomic_write_json, package_versions
from curate.steps.pool_tars import check_format, index_pool, store_shard
from curate.steps.url_list import ROW, read_url_list
from curate.tarindex import INDEX_DIR

log = logging.getLogger(__name__)

WORK_DIR = "_ingest_tmp"
MIN_SHARD, MAX_SHARD = 256, 10_000
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
           timeout: float = 10.0, retries: int = 0, shard_size: int | None = None,
           max_caption_chars: int | None = None, overwrite: bool = False, output_format: str = "parquet") -> dict:
    """Download `url_list` with img2dataset into the pool directory `out`; returns `_pool.json`.
    ``shard_size`` None: ``default_shard_size`` for the list's rows and this machine's cores.
    ``output_format`` "webdataset" keeps the images in tars beside the shards (curate.steps.pool_tars)."""
    url_list, out = Path(url_list), Path(out)
    check_format(output_format)
    with directory_lock(out):
        inputs, truncated = read_url_list(url_list, url_col, caption_col, max_caption_chars)
        shard_size = shard_size or default_shard_size(inputs.num_rows)
        return _ingest(url_list, out, inputs, truncated, overwrite, output_format,
                       download_options(processes, threads, resize_mode, image_size, timeout, retries, shard_size))


def download_options(processes: int = 2, threads: int = 16, resize_mode: str = "no", image_size: int = 512,
                     timeout: float = 10.0, retries: int = 0, shard_size: int = MAX_SHARD) -> dict:
    """img2dataset's options as ingest (and its --retry-failed and --append) run it."""
    return {"processes_count": processes, "thread_count": threads, "resize_mode": resize_mode,
            "image_size": image_size, "timeout": timeout, "retries": retries,
            "number_sample_per_shard": shard_size, "skip_reencode": resize_mode == "no"}


def default_shard_size(rows: int, cores: int | None = None) -> int:
    """Rows per pool shard: about four shards per core, so every core of the local engine works
    even on a small pool (a 3,000-row list on 2 cores: 8 shards of 375), and at most 10,000
    (img2dataset's default), so memory per partition stays bounded on a large one; at least
    MIN_SHARD rows, so a shard's fixed costs (a file, a task) stay small against its work."""
    cores = cores or os.cpu_count() or 1
    return max(MIN_SHARD, min(MAX_SHARD, -(-rows // (4 * cores))))


def _ingest(url_list: Path, out: Path, inputs: pa.Table, truncated: int, overwrite: bool, output_format: str,
            options: dict) -> dict:
    shard_size = options["number_sample_per_shard"]
    finished = finished_pool(out, url_list, inputs.num_rows, output_format)
    if finished is not None:
        log.info("%s already holds the pool of %s (%d rows): skipping", out, url_list, inputs.num_rows)
        return finished
    prepare_out(out, url_list, overwrite)
    begin = {"status": "writing", "command": "ingest", "source": str(url_list.resolve()), "format": "img2dataset",
             "output_format": output_format}
    atomic_write_json(begin, out / POOL_INFO)
    work = out / WORK_DIR
    try:
        raw_dirs = run_downloads(inputs, work, options)
        status_counts = write_pool(inputs, raw_files(raw_dirs, inputs, url_list), out, shard_size,
                                   output_format=output_format)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if output_format == "webdataset":
        index_pool(out)
    info = {**begin, "status": "complete", "rows": inputs.num_rows,
            "shard_files": {shard.path.name: shard.rows for shard in scan_shards(out, complete=False)},
            "shards": -(-inputs.num_rows // shard_size), "status_counts": dict(sorted(status_counts.items())),
            "columns": POOL_SCHEMA.names, "captions_truncated": truncated,
            "img2dataset": {**options, "rows_with_expected_sha256": pc.count(inputs["sha256"]).as_py()},
            "versions": package_versions()}
    atomic_write_json(info, out / POOL_INFO)
    log.info("ingested %d rows of %s into %s: %s", inputs.num_rows, url_list, out, info["status_counts"])
    return info


def finished_pool(out: Path, url_list: Path, rows: int, output_format: str = "parquet") -> dict | None:
    """The `_pool.json` of a complete earlier ingest of the same URL list into `out`, if any."""
    info = pool_info(out) if out.is_dir() else None
    if not info or info.get("status", "complete") != "complete":
        return None
    if info.get("source") != str(url_list.resolve()) or info.get("rows") != rows:
        return None
    if info.get("output_format", "parquet") != output_format:
        return None
    try:
        scan_shards(out)  # the shards are still the ones written
    except PoolError:
        return None
    return info


def prepare_out(out: Path, url_list: Path, overwrite: bool) -> None:
    """Make `out` ready for a pool of `url_list`. An empty or new folder is used; a pool ingest
    wrote from the same URL list (an unfinished run) is replaced; a pool of another source only
    with ``overwrite``; a folder of files curate did not write never (nothing of it is deleted)."""
    claim(out, POOL_INFO, "pool")
    info = pool_info(out) if out.is_dir() else None
    if info is not None and info.get("source") != str(url_list.resolve()) and not overwrite:
        raise RunDirError(f"{out}: holds the pool of {info.get('source')}, not of {url_list}; pass --overwrite to "
                          f"replace it, or choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    written = set((info or {}).get("shard_files") or ()) | {p.name for p in out.glob("*.parquet") if SHARD_NAME.match(p.name)}
    for name in written:
        (out / name).unlink(missing_ok=True)
        (out / name).with_suffix(".tar").unlink(missing_ok=True)
    shutil.rmtree(out / INDEX_DIR, ignore_errors=True)
    (out / POOL_INFO).unlink(missing_ok=True)
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


def write_pool(inputs: pa.Table, files: list[tuple[Path, int, int]], out: Path, shard_size: int,
               first_index: int = 0, output_format: str = "parquet") -> Counter:
    """Pool shard first_index + k = input rows [k * shard_size, (k + 1) * shard_size), joined to the
    download results."""
    status_counts: Counter = Counter()
    shards = -(-inputs.num_rows // shard_size)
    for index in tqdm(range(shards), desc="write pool", unit="shard"):
        low, high = index * shard_size, min(inputs.num_rows, (index + 1) * shard_size)
        raw = [pq.read_table(path, columns=RAW_COLUMNS, filters=[(ROW, ">=", low), (ROW, "<", high)])
               for path, first, last in files if first < high and last >= low]
        shard = pool_shard(inputs.slice(low, high - low), pa.concat_tables(raw, promote_options="permissive"))
        counted = pc.value_counts(shard["status"])
        status_counts.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))
        store_shard(shard, out / f"{first_index + index:05d}.parquet", output_format)
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
