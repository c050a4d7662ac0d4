"""How each engine writes reshard's output shards (curate.steps.reshard has the plan and the rules).

Local: a worker pool over output shards. In pool order an output shard's samples come from a few
neighbouring pool shards, which its task reads (a worker keeps the last one). Shuffled, every
output shard draws from every pool shard: each pool shard's selected rows are first scattered, in
output order, to an Arrow file (threads: Arrow releases the GIL) that tasks read slices of.

Spark: the same scatter and gather tasks, run as Spark tasks (one element each) that read the pool
from the shared filesystem themselves: no join, no shuffle, no image bytes through the JVM.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.engines.workers import WorkerPool
from curate.pool import Shard, read_shard
from curate.progress import Progress
from curate.runio import atomic_write_ipc
from curate.steps.tars import write_shard
from curate.tarindex import image_column

log = logging.getLogger(__name__)

SAMPLE, SHARD, POOL_SHARD, POOL_ROW, COPY = "_sample", "_shard", "_pool_shard", "_pool_row", "_copy"
WORK = "_work"


def tasks(plan: pa.Table, shards: list[Shard], spec) -> tuple[list[tuple], list[tuple]]:
    """The scatter tasks (shuffled only: one per pool shard with selected rows) and the gather
    tasks (one per output shard), the same on both engines."""
    scatter_dir = Path(spec.out) / WORK / "scatter"
    scatter_dir.mkdir(parents=True, exist_ok=True)
    pool_shard, scatter, sources = plan.column(POOL_SHARD).to_numpy(), [], {}
    for shard in shards:
        piece = plan.filter(pa.array(pool_shard == shard.index)).sort_by([(SHARD, "ascending"), (SAMPLE, "ascending")])
        target = scatter_dir / f"{shard.part}.arrow" if spec.cfg.shuffle else shard.path
        if spec.cfg.shuffle and piece.num_rows:
            scatter.append((shard.path, piece, spec.pool_columns, target))
        out_shards = piece.column(SHARD).to_numpy()
        for number in np.unique(out_shards):
            start, stop = np.searchsorted(out_shards, [number, number + 1])
            rows = None if spec.cfg.shuffle else piece.slice(start, stop - start)
            sources.setdefault(int(number), []).append((target, rows, start, stop))
    return scatter, [(number, sources[number], spec) for number in sorted(sources)]


def run_local(plan: pa.Table, shards: list[Shard], spec, workers: WorkerPool) -> None:
    scatter, gather = tasks(plan, shards, spec)
    with ThreadPoolExecutor(workers.workers) as executor, Progress("reshard scatter", len(scatter)) as progress:
        for _ in executor.map(_scatter, scatter):
            progress.update()
    workers.map(_gather, gather, "reshard", unit="shard")
    _LAST_READ.clear()


_LAST_READ: dict[tuple, pa.Table] = {}  # per worker process: the pool shard read last


def _pool_rows(path: Path, piece: pa.Table, columns: tuple[str, ...], *, keep: bool) -> pa.Table:
    """The plan rows ``piece`` of pool shard ``path`` with the pool's ``columns`` appended."""
    if image_column(path.parent) in columns:  # images in tars: read the selected rows only
        table = read_shard(path, list(columns), piece.column(POOL_ROW).to_numpy())
        for name in columns:
            piece = piece.append_column(table.schema.field(name), table.column(name))
        return piece
    key = (str(path), path.stat().st_mtime_ns, columns)
    table = _LAST_READ[key] if key in _LAST_READ else read_shard(path, list(columns))
    if keep and key not in _LAST_READ:
        _LAST_READ.clear()
        _LAST_READ[key] = table
    table = table.take(piece.column(POOL_ROW))
    for name in columns:
        piece = piece.append_column(table.schema.field(name), table.column(name))
    return piece


def _scatter(task: tuple) -> int:
    path, piece, columns, target = task
    piece = _pool_rows(path, piece, columns, keep=False)
    atomic_write_ipc(piece, target)
    return piece.num_rows


def _gather(task: tuple) -> dict:
    number, sources, spec = task
    pieces = [_pool_rows(path, rows, spec.pool_columns, keep=True) if rows is not None else
              pa.ipc.open_file(pa.memory_map(str(path))).read_all().slice(start, stop - start)
              for path, rows, start, stop in sources]
    rows = pa.concat_tables(pieces, promote_options="permissive")
    if (np.diff(rows.column(SAMPLE).to_numpy()) < 0).any():  # shuffled: pieces interleave
        rows = rows.sort_by(SAMPLE)
    return write_shard(rows, number, spec, SAMPLE)


def run_spark(plan: pa.Table, shards: list[Shard], spec, spark) -> None:
    """The local engine's tasks as Spark tasks, one per element: each reads the pool shards (or
    scatter files) it needs from the shared filesystem itself, so no image goes through the JVM
    or a shuffle; Spark schedules and retries them (a retried task rewrites its file atomically)."""
    context = spark.sparkContext
    scatter, gather = tasks(plan, shards, spec)
    if scatter:
        context.parallelize(scatter, len(scatter)).map(_scatter).collect()
    written = context.parallelize(gather, len(gather)).map(_gather).collect() if gather else []
    log.info("reshard: Spark wrote %d shard(s)", len(written))
