"""The local engine: pyarrow/polars, shard by shard, CPU work in a process pool.

One pool shard is one partition. For each partition the engine reads only the columns the
stage reads (from the pool shard and from the row-aligned parts of earlier stages), applies
the stage, writes OUT/<stage>/part-NNNNN.parquet atomically, then its completion marker.
A re-run skips partitions with a marker, so a killed run resumes where it stopped. Memory is
bounded by a shard. Workers are spawned processes; models load once per worker process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.engines import plan as planning
from curate.pool import Shard, read_shard, scan_shards
from curate.runio import atomic_write_ipc, atomic_write_table, done_stats, is_done, mark_done, read_manifest, write_manifest
from curate.contract import CARRY_PREFIX, RecipeError, Stage
from curate.stages import get_stage

log = logging.getLogger(__name__)

LAYOUT = "pool-shards"
CARRY_DIR = "_carry"  # OUT/<stage>/_carry/: Fit.partial_carry columns, fit -> apply, then deleted


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_stage(stage: Stage, cfg: Any, pool_dir: Path, out_dir: Path, *, workers: int | None = None) -> dict:
    shards = scan_shards(pool_dir)
    plan = planning.make_plan(stage, cfg, shards, out_dir)
    planning.require_local_layout(list(plan.source_dirs.values()))
    if planning.prepare_stage_dir(plan):
        log.info("%s: complete in %s, skipping", stage.name, plan.stage_dir)
        return read_manifest(plan.stage_dir)
    write_manifest(plan.stage_dir, **planning.manifest_fields(plan, "local", LAYOUT, "running"))
    workers = workers or default_workers()
    if stage.max_workers is not None:  # e.g. a model stage: one process, torch threads use the cores
        workers = max(1, min(workers, stage.max_workers(cfg)))
    with shared_workers(workers):  # the fit's worker processes (and what they loaded) do the apply too
        started = time.perf_counter()
        artifact_rows = _fit(plan, shards, out_dir, workers) if stage.fit else None
        fit_seconds, started = round(time.perf_counter() - started, 3), time.perf_counter()
        tasks = [(stage.name, cfg, shard, plan.sources, plan.source_dirs, out_dir) for shard in shards
                 if not is_done(plan.stage_dir, shard.part, plan.stage_dir / f"{shard.part}.parquet")]
        if stage.group_by is not None and tasks:
            from curate.engines.groups import run_groups

            run_groups(plan, shards, out_dir, workers, _map)  # per-group apply: a bounded shuffle
        else:
            _map(_apply_partition, tasks, workers, f"{stage.name}")
    stats = done_stats(plan.stage_dir)
    rows = sum(s["rows"] for s in stats)
    manifest = write_manifest(plan.stage_dir, **planning.manifest_fields(
        plan, "local", LAYOUT, "complete", rows=rows, partitions=len(stats), artifact_rows=artifact_rows,
        fit_seconds=fit_seconds, seconds_last_run=round(time.perf_counter() - started, 3)))  # the apply only
    shutil.rmtree(plan.stage_dir / CARRY_DIR, ignore_errors=True)
    return manifest


def _fit(plan: planning.Plan, shards: list[Shard], out_dir: Path, workers: int) -> int:
    artifact = planning.load_artifact(plan.stage_dir)
    if artifact is None:
        fit = plan.stage.fit
        for number in range(fit.passes):
            carry = plan.stage_dir / CARRY_DIR if fit.partial_carry and number == fit.passes - 1 else None
            tasks = [(plan.stage.name, plan.cfg, shard, plan.sources, plan.source_dirs, artifact, carry)
                     for shard in shards]
            partials = _map(_partial_partition, tasks, workers, f"{plan.stage.name} fit {number + 1}/{fit.passes}")
            merged = merge_partials(partials, fit.keys, fit.having(plan.cfg))
            artifact = fit.finalize(merged, plan.cfg, artifact)
        planning.save_artifact(plan, artifact)
    return artifact.num_rows


def merge_partials(partials: list[pa.Table], keys: tuple[str, ...], having: str | None) -> pa.Table:
    """Group the partial tables by their keys and sum the other columns, then filter."""
    frame = pl.from_arrow(pa.concat_tables(partials))
    sums = [pl.col(c).sum() for c in frame.columns if c not in keys]
    merged = frame.group_by(list(keys)).agg(sums).sort(list(keys))
    if having:
        merged = merged.filter(pl.sql_expr(having))
    return merged.to_arrow().cast(partials[0].schema)


_SHARED: dict[str, Any] = {}


@contextmanager
def shared_workers(workers: int):
    """Within this block, ``_map`` calls with this many workers share one process pool, started
    on first use: the processes start (and load models or entry lists) once per stage, not once
    per fit pass and again for the apply."""
    _SHARED.update(workers=workers, executor=None)
    try:
        yield
    finally:
        executor = _SHARED.get("executor")
        _SHARED.clear()
        if executor is not None:
            executor.shutdown()


def _map(function: Callable, tasks: list, workers: int, label: str) -> list:
    if not tasks:
        return []
    progress = tqdm(total=len(tasks), desc=label, unit="part", disable=None)
    if workers <= 1 or len(tasks) == 1:
        results = [_tick(function(task), progress) for task in tasks]
    elif _SHARED.get("workers") == workers:
        if _SHARED["executor"] is None:
            _SHARED["executor"] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = [_tick(result, progress) for result in _SHARED["executor"].map(function, tasks)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as executor:
            results = [_tick(result, progress) for result in executor.map(function, tasks)]
    progress.close()
    return results


def _tick(result: Any, progress: tqdm) -> Any:
    progress.update(1)
    return result


def read_inputs(shard: Shard, sources: dict[str, list[str]], source_dirs: dict[str, Path]) -> pa.Table:
    """The pool shard's columns plus the row-aligned columns of earlier stages and sidecars."""
    table = read_shard(shard.path, sources[planning.POOL])
    for name, columns in sources.items():
        if name == planning.POOL:
            continue
        part_path = source_dirs[name] / f"{shard.part}.parquet"
        part = pq.read_table(part_path, columns=["uid", *columns])
        if not part.column("uid").equals(table.column("uid")):
            raise RecipeError(f"{part_path}: uids are not row-aligned with {shard.path}")
        for column in columns:
            table = table.append_column(part.schema.field(column), part.column(column))
    return table


def _partial_partition(task: tuple) -> pa.Table:
    stage_name, cfg, shard, sources, source_dirs, previous, carry_dir = task
    stage = get_stage(stage_name)
    table = read_inputs(shard, sources, source_dirs)
    if carry_dir is None:
        return stage.fit.partial(stage.input_columns(table, cfg), cfg, previous)
    partial, carried = stage.fit.partial_carry(stage.input_columns(table, cfg), cfg, previous)
    if carried.num_rows != table.num_rows or not all(n.startswith(CARRY_PREFIX) for n in carried.column_names):
        raise RuntimeError(f"stage {stage_name}: partial_carry must return {table.num_rows} rows of "
                           f"{CARRY_PREFIX}* columns, got {carried.num_rows} of {carried.column_names}")
    atomic_write_ipc(carried.add_column(0, "uid", table.column("uid")), carry_dir / f"{shard.part}.arrow")
    return partial


def read_carry(stage_dir: Path, shard: Shard, table: pa.Table) -> pa.Table:
    """``table`` plus the columns the fit carried for this partition, when they are there and
    row-aligned with it; otherwise ``table`` unchanged (apply then recomputes them)."""
    path = stage_dir / CARRY_DIR / f"{shard.part}.arrow"
    if not path.is_file():
        return table
    carried = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    if not carried.column("uid").equals(table.column("uid")):
        log.warning("%s: not row-aligned with %s; ignoring it", path, shard.path)
        return table
    for field, column in zip(carried.schema, carried.columns):
        if field.name != "uid":
            table = table.append_column(field, column)
    return table


def _apply_partition(task: tuple) -> dict:
    stage_name, cfg, shard, sources, source_dirs, out_dir = task
    stage = get_stage(stage_name)
    stage_dir = out_dir / stage_name
    started = time.perf_counter()
    table = read_inputs(shard, sources, source_dirs)
    if stage.fit is not None and stage.fit.partial_carry is not None:
        table = read_carry(stage_dir, shard, table)
    output = stage.run_apply(table, cfg, planning.cached_artifact(stage_dir))
    atomic_write_table(output, stage_dir / f"{shard.part}.parquet")
    stats = {"part": shard.part, "source": str(shard.path), "rows": output.num_rows,
             "seconds": round(time.perf_counter() - started, 3)}
    mark_done(stage_dir, shard.part, stats)
    return stats


def iter_parts(stage_dir: Path) -> Iterable[Path]:
    return sorted(stage_dir.glob("part-*.parquet"))
