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

from curate import npzlinks
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

    def inputs(self, fit: bool = False) -> pa.Table:
        """The partition's inputs; for a fit pass (``fit``) without the uid column unless the
        stage reads it."""
        with_uid = not fit or "uid" in self.stage.reads(self.cfg)
        return read_inputs(self.shard, self.sources, self.source_dirs, with_uid)


def read_inputs(shard: Shard, sources: dict[str, list[str]], source_dirs: dict[str, Path],
                with_uid: bool = True) -> pa.Table:
    """The pool shard's columns plus the row-aligned columns of earlier stages and sidecars.

    ``with_uid`` False (a fit pass of a stage that does not read uid): the uid column is not read
    (decoding 32-character uids costs 100x a float column) and parts are checked against the shard
    by row count only; the apply reads uids and checks them row by row, so misaligned inputs still
    never complete a stage."""
    pool_columns = sources[planning.POOL] if with_uid else [c for c in sources[planning.POOL] if c != "uid"]
    table = read_shard(shard.path, pool_columns)
    for name, columns in sources.items():
        if name == planning.POOL:
            continue
        part_path = source_dirs[name] / f"{shard.part}.parquet"
        try:
            part = npzlinks.read_part(source_dirs[name], shard.part, ["uid", *columns] if with_uid else columns)
        except (OSError, pa.ArrowInvalid) as error:
            raise PoolError(f"{part_path}: cannot read it ({error}); re-run the {name} stage") from error
        if with_uid and not part.column("uid").equals(table.column("uid")):
            raise PoolError(f"{part_path}: uids are not row-aligned with {shard.path}")
        if part.num_rows != table.num_rows:
            raise PoolError(f"{part_path}: {part.num_rows} rows, but {shard.path} has {table.num_rows}")
        for column in columns:
            table = table.append_column(part.schema.field(column), part.column(column))
    return table


def partial_task(task: tuple[Partition, int, pa.Table | None]) -> pa.Table:
    partition, number, previous = task
    table = partition.inputs(fit=True)
    step = f"fit pass {partition.stage.fit.passes[number].name}"
    try:
        return partition.stage.checked_partial(number, table, partition.cfg, previous)
    except Exception:
        named = table if "uid" in table.column_names else partition.inputs()  # uids, to name the failing row
        with local_failures(partition.stage.name, step, partition.shard.path, named):
            raise


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
