"""The local engine's per-group path (a stage with ``group_by``, e.g. per k-means cluster).

A bounded shuffle through files, three worker-pool phases:

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.engines import plan as planning
from curate.engines.failures import local_failures
from curate.engines.partitions import Partition
from curate.engines.workers import WorkerPool
from curate.errors import PoolError
from curate.pool import Shard, read_shard
from curate.runio import atomic_write_table, mark_done

SHUFFLE = planning.SHUFFLE
BUCKET_BYTES = 256 << 20
KEY, SHARD, ROW = "_group", "_shard", "_row"


@dataclass(frozen=True)
class Bucket:
    partition: Partition   # the stage, its config and directories (its shard is unused here)
    directory: Path
    parts: tuple[str, ...]
    sources: tuple[str, ...]


def run_groups(plan: planning.Plan, shards: list[Shard], workers: WorkerPool, limit: int | None = None) -> None:
    shuffle = plan.stage_dir / SHUFFLE
    shutil.rmtree(shuffle, ignore_errors=True)
    buckets = bucket_count(plan, shards, workers.workers)
    partitions = [Partition.of(plan, shard) for shard in shards]
    name = plan.stage.name
    workers.map(scatter, [(p, index, buckets) for index, p in enumerate(partitions)], f"{name} scatter", limit=limit)
    bucket_dirs = sorted((shuffle / "in").glob("*")) if (shuffle / "in").exists() else []
    tasks = [Bucket(partitions[0], path, tuple(s.part for s in shards), tuple(str(s.path) for s in shards))
             for path in bucket_dirs]
    workers.map(process_bucket, tasks, f"{name} groups", unit="bucket", limit=limit)
    workers.map(gather, partitions, f"{name} gather", limit=limit)
    shutil.rmtree(shuffle, ignore_errors=True)


def bucket_count(plan: planning.Plan, shards: list[Shard], workers: int) -> int:
    sample = next((s for s in shards if s.rows), None)
    if sample is None:
        return 1
    row_bytes = Partition.of(plan, sample).inputs().nbytes / sample.rows
    return max(workers, math.ceil(sum(s.rows for s in shards) * row_bytes / BUCKET_BYTES))


def scatter(task: tuple[Partition, int, int]) -> int:
    partition, index, buckets = task
    stage, cfg, shuffle = partition.stage, partition.cfg, partition.stage_dir / SHUFFLE
    artifact = planning.cached_artifact(partition.stage_dir)
    table = partition.inputs()
    with local_failures(stage.name, "group_by", partition.shard.path, table):
        keys = pa.chunked_array([stage.group_by(stage.input_columns(table, cfg), cfg, artifact)]).cast(pa.int64())
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    excluded = pc.is_null(keys)
    loose = table.filter(excluded)
    if loose.num_rows:
        loose_rows = rows.filter(excluded)
        with local_failures(stage.name, "apply", partition.shard.path, loose,
                            lambda row: (str(partition.shard.path), None if row is None else loose_rows[row].as_py())):
            output = stage.checked_apply(loose, cfg, artifact)
        _write(output.append_column(ROW, rows.filter(excluded)), shuffle / "out" / partition.shard.part / "excluded.parquet")
    grouped = table.append_column(KEY, keys).append_column(SHARD, pa.array(np.full(table.num_rows, index, np.int32)))
    grouped = grouped.append_column(ROW, rows).filter(pc.invert(excluded))
    bucket = np.mod(np.asarray(grouped.column(KEY).to_numpy(), dtype=np.int64), buckets)
    for number in np.unique(bucket):
        _write(grouped.filter(pa.array(bucket == number)), shuffle / "in" / f"{number:05d}" / f"{partition.shard.part}.parquet")
    return grouped.num_rows


def process_bucket(task: Bucket) -> int:
    stage, cfg, stage_dir = task.partition.stage, task.partition.cfg, task.partition.stage_dir
    artifact = planning.cached_artifact(stage_dir)
    table = pa.concat_tables([pq.read_table(path) for path in sorted(task.directory.glob("*.parquet"))])
    table = table.sort_by([(KEY, "ascending"), (SHARD, "ascending"), (ROW, "ascending")])
    keys = table.column(KEY).to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    outputs = []
    for start, stop in zip(starts, np.r_[starts[1:], len(keys)]):
        group = table.slice(start, stop - start)
        with local_failures(stage.name, f"apply to group {keys[start]}", "", group, _locator(group, task.sources)):
            output = stage.checked_apply(group.drop_columns([KEY, SHARD, ROW]), cfg, artifact)
        outputs.append(output.append_column(SHARD, group.column(SHARD)).append_column(ROW, group.column(ROW)))
    output = pa.concat_tables(outputs)
    shard_index = output.column(SHARD).to_numpy()
    for index in np.unique(shard_index):
        part = output.filter(pa.array(shard_index == index)).drop_columns([SHARD])
        _write(part, stage_dir / SHUFFLE / "out" / task.parts[index] / f"{task.directory.name}.parquet")
    return output.num_rows


def _locator(group: pa.Table, sources: tuple[str, ...]):
    """Batch row -> (pool shard, row in it) for a group; no row: the shard of the group's first row."""
    def locate(row: int | None) -> tuple[str, int | None]:
        at = 0 if row is None else row
        return sources[group.column(SHARD)[at].as_py()], None if row is None else group.column(ROW)[at].as_py()
    return locate


def gather(partition: Partition) -> dict:
    stage, stage_dir, shard = partition.stage, partition.stage_dir, partition.shard
    pieces = sorted((stage_dir / SHUFFLE / "out" / shard.part).glob("*.parquet"))
    schema = stage.output_schema()
    if pieces:
        output = pa.concat_tables([pq.read_table(path) for path in pieces]).sort_by(ROW).drop_columns([ROW])
    else:
        output = schema.empty_table()
    output = output.select(schema.names).cast(schema)
    if not output.column("uid").equals(read_shard(shard.path, ["uid"]).column("uid")):
        raise PoolError(f"{stage.name}: the grouped output for {shard.path} is not row-aligned with it")
    atomic_write_table(output, stage_dir / f"{shard.part}.parquet")
    stats = {"part": shard.part, "source": str(shard.path), "rows": output.num_rows}
    mark_done(stage_dir, shard.part, stats, stage_dir / f"{shard.part}.parquet")
    return stats


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
