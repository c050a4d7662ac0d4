"""The local engine: pyarrow/polars, shard by shard, CPU work in a process pool (DESIGN.md 3).

One pool shard is one partition. For each partition the engine reads only the columns the
stage reads (from the pool shard and from the row-aligned parts of earlier stages), applies
the stage, writes OUT/<stage>/part-NNNNN.parquet atomically, then its completion marker.
A re-run skips partitions with a marker, so a killed run resumes where it stopped. Memory is
bounded by a shard. Workers are spawned processes (curate.engines.workers) handed the Stage
value itself; models and artifacts load once per worker process.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.contract import Stage
from curate.engines import plan as planning
from curate.engines.failures import check_shards_unchanged, local_failures
from curate.engines.groups import run_groups
from curate.engines.partitions import Partition, apply_task, partial_task
from curate.engines.workers import WorkerPool
from curate.pool import Shard, scan_shards
from curate.runio import done_stats, is_done, read_manifest, write_manifest

log = logging.getLogger(__name__)

LAYOUT = "pool-shards"


def run_stage(stage: Stage, cfg: Any, pool_dir: Path, out_dir: Path, workers: WorkerPool,
              frozen: Path | None = None) -> dict:
    """Run one stage over the pool into OUT/<stage>/ (or skip it when complete and unchanged);
    ``frozen``: a previous run directory whose fitted statistics to keep (curate.engines.frozen)."""
    shards = scan_shards(pool_dir)
    plan = planning.make_plan(stage, cfg, shards, out_dir, frozen)
    planning.require_local_layout(list(plan.source_dirs.values()))
    if planning.prepare_stage_dir(plan):
        log.info("%s: complete in %s, skipping", stage.name, plan.stage_dir)
        return read_manifest(plan.stage_dir)
    write_manifest(plan.stage_dir, **planning.manifest_fields(plan, "local", LAYOUT, "running"))
    limit = stage.max_workers(cfg) if stage.max_workers is not None else None
    started = time.perf_counter()
    planning.install_frozen(plan)
    artifact_rows = fit(plan, shards, workers, limit) if stage.fit else None
    fit_seconds, started = round(time.perf_counter() - started, 3), time.perf_counter()
    todo = [Partition.of(plan, shard) for shard in shards
            if not is_done(plan.stage_dir, shard.part, plan.stage_dir / f"{shard.part}.parquet")]
    if stage.group_by is not None and todo:
        run_groups(plan, shards, workers, limit)  # per-group apply: a bounded shuffle
    else:
        workers.map(apply_task, todo, stage.name, limit=limit)
    check_shards_unchanged(stage.name, shards, plan.inputs)
    stats = done_stats(plan.stage_dir)
    return write_manifest(plan.stage_dir, **planning.manifest_fields(
        plan, "local", LAYOUT, "complete", rows=sum(s["rows"] for s in stats), partitions=len(stats),
        artifact_rows=artifact_rows, fit_seconds=fit_seconds,
        seconds_last_run=round(time.perf_counter() - started, 3)))  # the apply only


def fit(plan: planning.Plan, shards: list[Shard], workers: WorkerPool, limit: int | None) -> int:
    """The stage's fit passes (or the artifact a killed run already saved); the artifact's rows."""
    artifact = planning.load_artifact(plan.stage_dir)
    if artifact is None:
        partitions = [Partition.of(plan, shard) for shard in shards]
        for number, step in enumerate(plan.stage.fit.passes):
            label = f"{plan.stage.name} fit {step.name} ({number + 1}/{len(plan.stage.fit.passes)})"
            partials = workers.map(partial_task, [(p, number, artifact) for p in partitions], label, limit=limit)
            artifact = finalize(plan, number, planning.merge_partials(partials, step, plan.cfg), artifact)
        planning.save_artifact(plan, artifact)
    return artifact.num_rows


def finalize(plan: planning.Plan, number: int, merged: pa.Table, previous: pa.Table | None) -> pa.Table:
    step = plan.stage.fit.passes[number]
    with local_failures(plan.stage.name, f"fit pass {step.name}: finalize", plan.stage_dir):
        return step.finalize(merged, plan.cfg, previous)
