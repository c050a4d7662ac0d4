"""The local engine's per-group path (a stage with ``group_by``, e.g. per k-means cluster).

A bounded shuffle through files, three process-pool phases:

1. scatter, per pool shard: read the stage's inputs, compute each row's group key; rows with a
   null key get ``apply`` at once (they belong to no group); the others, with their shard
   index and row index, go to bucket file ``_shuffle/in/BBBBB/<part>.parquet``, bucket = key
   modulo the bucket count;
2. per bucket: read its files, sort by key, call ``apply`` once per group with all its rows,
   write the outputs split by shard to ``_shuffle/out/<part>/BBBBB.parquet``;
3. gather, per shard: concatenate its outputs, sort by row index, check the uids against the
   pool shard, write OUT/<stage>/part-NNNNN.parquet (row-aligned, as every local stage) and
   its completion marker.

Memory is bounded by a bucket (the bucket count is chosen so a bucket's inputs are about
``BUCKET_BYTES``) or by the largest group, whichever is larger. ``_shuffle`` is removed at the
end; an interrupted run redoes the shuffle (a stage directory is only complete when every part
is written). Spark does the same with ``groupBy(key).applyInArrow`` (curate.engines.spark).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.engines import plan as planning
from curate.pool import Shard, read_shard
from curate.runio import atomic_write_table, mark_done
from curate.stages import get_stage

SHUFFLE = "_shuffle"
BUCKET_BYTES = 256 << 20
KEY, SHARD, ROW = "_group", "_shard", "_row"


def run_groups(plan: planning.Plan, shards: list[Shard], out_dir: Path, workers: int, map_tasks: Callable) -> None:
    shuffle = plan.stage_dir / SHUFFLE
    shutil.rmtree(shuffle, ignore_errors=True)
    buckets = bucket_count(plan, shards, workers)
    parts = [shard.part for shard in shards]
    name, cfg = plan.stage.name, plan.cfg
    map_tasks(_scatter, [(name, cfg, index, shard, plan.sources, plan.source_dirs, out_dir, buckets)
                         for index, shard in enumerate(shards)], workers, f"{name} scatter")
    bucket_dirs = sorted((shuffle / "in").glob("*")) if (shuffle / "in").exists() else []
    map_tasks(_process_bucket, [(name, cfg, out_dir, path, parts) for path in bucket_dirs], workers, f"{name} groups")
    map_tasks(_gather, [(name, out_dir, shard) for shard in shards], workers, f"{name} gather")
    shutil.rmtree(shuffle, ignore_errors=True)


def bucket_count(plan: planning.Plan, shards: list[Shard], workers: int) -> int:
    from curate.engines.local import read_inputs

    sample = next((s for s in shards if s.rows), None)
    if sample is None:
        return 1
    row_bytes = read_inputs(sample, plan.sources, plan.source_dirs).nbytes / sample.rows
    return max(workers, math.ceil(sum(s.rows for s in shards) * row_bytes / BUCKET_BYTES))


def _scatter(task: tuple) -> int:
    from curate.engines.local import read_inputs

    stage_name, cfg, index, shard, sources, source_dirs, out_dir, buckets = task
    stage, shuffle = get_stage(stage_name), out_dir / stage_name / SHUFFLE
    artifact = planning.cached_artifact(out_dir / stage_name)
    table = read_inputs(shard, sources, source_dirs)
    keys = pa.chunked_array([stage.group_by(stage.input_columns(table, cfg), cfg, artifact)]).cast(pa.int64())
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    excluded = pc.is_null(keys)
    loose = table.filter(excluded)
    if loose.num_rows:
        output = stage.run_apply(loose, cfg, artifact).append_column(ROW, rows.filter(excluded))
        _write(output, shuffle / "out" / shard.part / "excluded.parquet")
    grouped = table.append_column(KEY, keys).append_column(SHARD, pa.array(np.full(table.num_rows, index, np.int32)))
    grouped = grouped.append_column(ROW, rows).filter(pc.invert(excluded))
    bucket = np.mod(np.asarray(grouped.column(KEY).to_numpy(), dtype=np.int64), buckets)
    for number in np.unique(bucket):
        _write(grouped.filter(pa.array(bucket == number)), shuffle / "in" / f"{number:05d}" / f"{shard.part}.parquet")
    return grouped.num_rows


def _process_bucket(task: tuple) -> int:
    stage_name, cfg, out_dir, bucket_dir, parts = task
    stage = get_stage(stage_name)
    artifact = planning.cached_artifact(out_dir / stage_name)
    table = pa.concat_tables([pq.read_table(path) for path in sorted(Path(bucket_dir).glob("*.parquet"))])
    table = table.sort_by([(KEY, "ascending"), (SHARD, "ascending"), (ROW, "ascending")])
    keys = table.column(KEY).to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    outputs = []
    for start, stop in zip(starts, np.r_[starts[1:], len(keys)]):
        group = table.slice(start, stop - start)
        output = stage.run_apply(group.drop_columns([KEY, SHARD, ROW]), cfg, artifact)
        outputs.append(output.append_column(SHARD, group.column(SHARD)).append_column(ROW, group.column(ROW)))
    output = pa.concat_tables(outputs)
    shard_index = output.column(SHARD).to_numpy()
    for index in np.unique(shard_index):
        part = output.filter(pa.array(shard_index == index)).drop_columns([SHARD])
        _write(part, out_dir / stage_name / SHUFFLE / "out" / parts[index] / f"{Path(bucket_dir).name}.parquet")
    return output.num_rows


def _gather(task: tuple) -> dict:
    stage_name, out_dir, shard = task
    stage, stage_dir = get_stage(stage_name), out_dir / stage_name
    pieces = sorted((stage_dir / SHUFFLE / "out" / shard.part).glob("*.parquet"))
    schema = stage.output_schema()
    if pieces:
        output = pa.concat_tables([pq.read_table(path) for path in pieces]).sort_by(ROW).drop_columns([ROW])
    else:
        output = schema.empty_table()
    output = output.select(schema.names).cast(schema)
    if not output.column("uid").equals(read_shard(shard.path, ["uid"]).column("uid")):
        raise RuntimeError(f"{stage_name}: the grouped output for {shard.path} is not row-aligned with it")
    atomic_write_table(output, stage_dir / f"{shard.part}.parquet")
    stats = {"part": shard.part, "source": str(shard.path), "rows": output.num_rows}
    mark_done(stage_dir, shard.part, stats)
    return stats


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
