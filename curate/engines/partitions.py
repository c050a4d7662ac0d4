"""The local engine's per-partition work: one pool shard, its row-aligned inputs, one stage call.

A task is a plain picklable value (``Partition``: the Stage itself, its config, the shard and
where each input column lives), run in a worker process by ``partial_task`` (one fit pass) or
``apply_task`` (the stage's output part and its completion marker).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract import Stage
from curate.engines import plan as planning
from curate.engines.failures import local_failures
from curate.errors import PoolError
from curate.pool import Shard, read_shard
from curate.runio import atomic_write_table, mark_done


@dataclass(frozen=True)
class Partition:
    stage: Stage
    cfg: Any
    shard: Shard
    sources: dict[str, list[str]]
    source_dirs: dict[str, Path]
    stage_dir: Path

    @classmethod
    def of(cls, plan: planning.Plan, shard: Shard) -> Partition:
        return cls(plan.stage, plan.cfg, shard, plan.sources, plan.source_dirs, plan.stage_dir)

    def inputs(self) -> pa.Table:
        return read_inputs(self.shard, self.sources, self.source_dirs)


def read_inputs(shard: Shard, sources: dict[str, list[str]], source_dirs: dict[str, Path]) -> pa.Table:
    """The pool shard's columns plus the row-aligned columns of earlier stages and sidecars."""
    table = read_shard(shard.path, sources[planning.POOL])
    for name, columns in sources.items():
        if name == planning.POOL:
            continue
        part_path = source_dirs[name] / f"{shard.part}.parquet"
        try:
            part = pq.read_table(part_path, columns=["uid", *columns])
        except (OSError, pa.ArrowInvalid) as error:
            raise PoolError(f"{part_path}: cannot read it ({error}); re-run the {name} stage") from error
        if not part.column("uid").equals(table.column("uid")):
            raise PoolError(f"{part_path}: uids are not row-aligned with {shard.path}")
        for column in columns:
            table = table.append_column(part.schema.field(column), part.column(column))
    return table


def partial_task(task: tuple[Partition, int, pa.Table | None]) -> pa.Table:
    partition, number, previous = task
    table = partition.inputs()
    step = f"fit pass {partition.stage.fit.passes[number].name}"
    with local_failures(partition.stage.name, step, partition.shard.path, table):
        return partition.stage.checked_partial(number, table, partition.cfg, previous)


def apply_task(partition: Partition) -> dict:
    started = time.perf_counter()
    table = partition.inputs()
    artifact = planning.cached_artifact(partition.stage_dir)
    with local_failures(partition.stage.name, "apply", partition.shard.path, table):
        output = partition.stage.checked_apply(table, partition.cfg, artifact)
    atomic_write_table(output, partition.stage_dir / f"{partition.shard.part}.parquet")
    stats = {"part": partition.shard.part, "source": str(partition.shard.path), "rows": output.num_rows,
             "seconds": round(time.perf_counter() - started, 3)}
    mark_done(partition.stage_dir, partition.shard.part, stats, partition.stage_dir / f"{partition.shard.part}.parquet")
    return stats
