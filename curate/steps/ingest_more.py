"""Growing and repairing a pool ingest wrote: `curate ingest --retry-failed` and `curate ingest --append`.

- **Retry** (``retry_failed``): the rows whose download failed with a *transient* error are
  downloaded again (img2dataset, the same options as ingest), in place: each pool shard holding one
  is rewritten atomically with those rows replaced by the new results, whatever they are (a row
  that fails again keeps a failure status, with the new error message); every other row, and the
  row order, stay as they were. Transient: status ``failed_to_download`` with an error that is not
  an HTTP 4xx (except 408 Request Timeout and 429 Too Many Requests) and not a hash mismatch;
  ``failed_to_resize`` (the bytes arrived and do not decode) is permanent. ``retry_all`` retries
  every failed download.
- **Append** (``append``): a new URL list goes to new shards numbered after the pool's last, with
  the ingest's shard size; a uid already in the pool (or twice in the list) stops the append before
  any download, naming the URL list row and the pool shard and row. Appending the same list again
  is a no-op.

Both keep the pool's output format (``_pool.json`` ``output_format``): in a webdataset pool a retried
shard's tar is rewritten with the new images, then its parquet, and the tar index is rebuilt.
Both write ``_pool.json`` with status "writing" first (so no stage reads a half-changed pool) and
"complete" with the new shard list last; a run killed in between is completed by running it again
(a retry finds the rows still failed; an append removes the shards it had begun and starts over).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import PoolError, RunDirError
from curate.outputs import directory_lock
from curate.pool import POOL_INFO, pool_info, read_shard, scan_shards
from curate.runio import atomic_write_json
from curate.steps import ingest as base
from curate.steps.pool_tars import fresh_index, index_pool, store_shard
from curate.steps.url_list import ROW, read_url_list

log = logging.getLogger(__name__)

PERMANENT = re.compile(r"HTTP Error 4(?!08|29)\d\d|hash", re.IGNORECASE)


def ingest_info(out: Path, command: str) -> dict:
    info = pool_info(out) if Path(out).is_dir() else None
    if not info or info.get("format") != "img2dataset":
        raise RunDirError(f"{out}: not a pool `curate ingest` wrote (no {POOL_INFO} of an ingest); "
                          f"`curate ingest --{command}` changes only those")
    if info.get("status") != "complete" and info.get("command") != f"ingest --{command}":
        raise PoolError(f"{out}: `curate {info.get('command', 'ingest')}` did not finish; run it again first")
    return info


def retryable(status: pa.ChunkedArray, errors: pa.ChunkedArray, retry_all: bool) -> np.ndarray:
    failed = np.asarray(pc.fill_null(pc.equal(status, "failed_to_download"), False))
    if retry_all:
        return failed
    permanent = np.array([bool(e and PERMANENT.search(e)) for e in errors.to_pylist()], dtype=bool)
    return failed & ~permanent


def retry_failed(out: Path, options: dict, retry_all: bool = False) -> dict:
    """Download the pool's transiently failed rows again; returns the new _pool.json."""
    out = Path(out)
    with directory_lock(out):
        info = ingest_info(out, "retry-failed")
        output_format = info.get("output_format", "parquet")
        if output_format == "webdataset":  # a killed retry may have replaced a tar but not its parquet
            fresh_index(out)
        shards = scan_shards(out, complete=False)
        inputs, where = [], {}
        offset = 0
        for shard in shards:
            table = pq.read_table(shard.path, columns=["uid", "url", "text", "sha256", "status", "error_message"])
            rows = np.flatnonzero(retryable(table["status"], table["error_message"], retry_all))
            if len(rows):
                where[shard.path] = (offset, rows)
                picked = table.take(pa.array(rows))
                inputs.append(pa.table({ROW: pa.array(offset + rows, pa.int64()), "uid": picked["uid"],
                                        "url": picked["url"], "caption": picked["text"], "sha256": picked["sha256"]}))
            offset += shard.rows
        if not inputs:
            log.info("retry: no row of %s failed with a transient error", out)
            return info
        inputs = pa.concat_tables(inputs)
        atomic_write_json({**info, "status": "writing", "command": "ingest --retry-failed"}, out / POOL_INFO)
        work = out / base.WORK_DIR
        shutil.rmtree(work, ignore_errors=True)
        try:
            files = retried_files(base.run_downloads(inputs, work, options), inputs, out)
            for path, (first, rows) in where.items():
                replace_rows(path, first, rows, inputs, files, output_format)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if output_format == "webdataset":
            index_pool(out)
        return finish(out, info, {"command": "retry-failed", "rows": inputs.num_rows})


def retried_files(raw_dirs: list[Path], inputs: pa.Table, out: Path) -> pa.Table:
    """img2dataset's results for the retried rows, every row exactly once."""
    tables = [pq.read_table(p, columns=base.RAW_COLUMNS) for d in raw_dirs for p in sorted(d.glob("*.parquet"))]
    raw = pa.concat_tables(tables, promote_options="permissive").sort_by(ROW) if tables else None
    if raw is None or not raw[ROW].equals(inputs.sort_by(ROW)[ROW]):
        raise PoolError(f"{out}: img2dataset did not return every retried row once; nothing was changed")
    return raw


def replace_rows(path: Path, first: int, rows: np.ndarray, inputs: pa.Table, raw: pa.Table,
                 output_format: str = "parquet") -> None:
    """Shard ``path`` with its rows ``rows`` replaced by their new download results, atomically (in
    the webdataset format: its tar first, then its parquet)."""
    table = read_shard(path)  # with the image bytes, from the tar in the webdataset format
    mine = pc.is_in(inputs[ROW], pa.array(first + rows, pa.int64()))
    new = base.pool_shard(inputs.filter(mine).sort_by(ROW), raw.filter(pc.is_in(raw[ROW], inputs.filter(mine)[ROW])))
    order = np.arange(table.num_rows, dtype=np.int64)
    order[rows] = table.num_rows + np.arange(len(rows))
    merged = pa.concat_tables([table.cast(base.POOL_SCHEMA), new]).take(pa.array(order))
    store_shard(merged, path, output_format)


def append(url_list: Path, out: Path, options: dict, url_col: str = "url", caption_col: str = "caption") -> dict:
    """Download ``url_list`` into new shards of the pool ``out``; returns the new _pool.json."""
    url_list, out = Path(url_list), Path(out)
    with directory_lock(out):
        info = ingest_info(out, "append")
        source = str(url_list.resolve())
        if info.get("status") == "complete" and source in [a["source"] for a in info.get("appended", [])]:
            log.info("%s already holds %s: skipping", out, url_list)
            return info
        if info.get("status") != "complete":  # a killed append: drop the shards it had begun
            for path in out.glob("*.parquet"):
                if base.SHARD_NAME.match(path.name) and path.name not in info["shard_files"]:
                    path.unlink()
                    path.with_suffix(".tar").unlink(missing_ok=True)
        inputs, truncated = read_url_list(url_list, url_col, caption_col, None)
        check_new_uids(inputs, out, url_list)
        shard_size = info["img2dataset"]["number_sample_per_shard"]
        first = max(int(name.split(".")[0]) for name in info["shard_files"]) + 1 if info["shard_files"] else 0
        atomic_write_json({**info, "status": "writing", "command": "ingest --append"}, out / POOL_INFO)
        work = out / base.WORK_DIR
        shutil.rmtree(work, ignore_errors=True)
        try:
            raw_dirs = base.run_downloads(inputs, work, {**options, "number_sample_per_shard": shard_size})
            files = base.raw_files(raw_dirs, inputs, url_list)
            counts = base.write_pool(inputs, files, out, shard_size, first_index=first,
                                     output_format=info.get("output_format", "parquet"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if info.get("output_format") == "webdataset":
            index_pool(out)
        appended = [*info.get("appended", []), {"source": source, "rows": inputs.num_rows,
                                                       "captions_truncated": truncated, "status_counts": dict(counts)}]
        return finish(out, info, {"command": "append", "rows": inputs.num_rows}, appended=appended)


def check_new_uids(inputs: pa.Table, out: Path, url_list: Path) -> None:
    new = dict(zip(inputs["uid"].to_pylist(), range(inputs.num_rows)))
    for shard in scan_shards(out, complete=False):
        uids = pq.read_table(shard.path, columns=["uid"])["uid"].to_pylist()
        for row, uid in enumerate(uids):
            if uid in new:
                raise PoolError(f"{url_list}: row {new[uid]} has uid {uid}, which the pool already holds "
                                f"({shard.path}, row {row}); nothing was downloaded")


def finish(out: Path, info: dict, event: dict, appended: list | None = None) -> dict:
    """_pool.json "complete" with the shards as they are now and the statuses recounted."""
    shards = scan_shards(out, complete=False)
    counts: dict[str, int] = {}
    for shard in shards:
        for item in pq.read_table(shard.path, columns=["status"])["status"].value_counts().to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    done = {**info, "status": "complete", "command": "ingest", "rows": sum(s.rows for s in shards), "shard_files": {s.path.name: s.rows for s in shards},
            "status_counts": dict(sorted(counts.items())), "history": [*info.get("history", []), event]}
    if appended is not None:
        done["appended"] = appended
    atomic_write_json(done, out / POOL_INFO)
    log.info("%s %s: %d rows; %s", event["command"], out, done["rows"], done["status_counts"])
    return done
