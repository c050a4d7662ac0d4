"""The subset step: the only place rows are selected.

Joins the pool with every stage's columns by uid, keeps the rows where the recipe's
``select`` expression is true (NULL is not true), and writes

- OUT/subset/part-NNNNN.parquet: the selected rows, all pool and stage columns;
- OUT/subset.npy: their uids in DataComp's submission format (dtype u8,u8, sorted).

The subset is a pure function of the stage outputs and the expression, so changing the
expression re-selects without recomputing any stage.

Decision (NaN): while ``select`` is evaluated, NaN in a float column counts as NULL, so
``score_clip >= 0.3`` is never true for a NaN score (a sample whose image failed to
embed). Left alone, polars and Spark both order NaN above every number and would select
it; DataComp drops such samples. The written rows keep their NaN values unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curate.engines import local
from curate.engines.plan import remove_temporaries, require_local_layout
from curate.pool import read_shard, scan_shards
from curate.runio import atomic_write_table, done_stats, is_done, mark_done, read_manifest, write_manifest
from curate.contract import RecipeError
from curate.uid import uid_pairs, write_datacomp_subset

log = logging.getLogger(__name__)

SUBSET = "subset"
SUBSET_NPY = "subset.npy"


def referenced_columns(select: str) -> list[str]:
    try:
        return sorted(set(pl.sql_expr(select).meta.root_names()))
    except Exception as error:  # polars raises several error types for bad SQL
        raise RecipeError(f"select {select!r} is not a valid SQL expression ({error})") from error


def check_select(select: str, available: list[str]) -> None:
    missing = [c for c in referenced_columns(select) if c not in available]
    if missing:
        raise RecipeError(f"select {select!r} names unknown column(s) {missing}; available: {sorted(available)}")


def _fingerprint(select: str, out_dir: Path, stage_names: list[str]) -> str:
    parts = [select] + [read_manifest(out_dir / name)["fingerprint"] for name in stage_names]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _prepare(out_dir: Path, fingerprint: str) -> bool:
    subset_dir = out_dir / SUBSET
    remove_temporaries(subset_dir)
    manifest = read_manifest(subset_dir)
    if manifest and manifest.get("fingerprint") == fingerprint:
        return manifest.get("status") == "complete"
    if subset_dir.exists():
        shutil.rmtree(subset_dir)
    return False


def run_subset_local(pool_dir: Path, out_dir: Path, stage_names: list[str], select: str, *, workers: int | None = None) -> dict:
    shards = scan_shards(pool_dir)
    require_local_layout([out_dir / name for name in stage_names])
    fingerprint = _fingerprint(select, out_dir, stage_names)
    subset_dir = out_dir / SUBSET
    if not _prepare(out_dir, fingerprint):
        write_manifest(subset_dir, stage=SUBSET, status="running", fingerprint=fingerprint, select=select,
                       stages=stage_names, engine="local", layout=local.LAYOUT)
        tasks = [(shard, out_dir, stage_names, select) for shard in shards
                 if not is_done(subset_dir, shard.part, subset_dir / f"{shard.part}.parquet")]
        local._map(_subset_partition, tasks, workers or local.default_workers(), SUBSET)
        stats = done_stats(subset_dir)
        write_manifest(subset_dir, stage=SUBSET, status="complete", fingerprint=fingerprint, select=select,
                       stages=stage_names, engine="local", layout=local.LAYOUT,
                       rows=sum(s["rows"] for s in stats), rows_in=sum(s["rows_in"] for s in stats))
    return finish(out_dir)


def _subset_partition(task: tuple) -> dict:
    shard, out_dir, stage_names, select = task
    table = read_shard(shard.path)
    for name in stage_names:
        part = pq.read_table(out_dir / name / f"{shard.part}.parquet")
        if not part.column("uid").equals(table.column("uid")):
            raise RecipeError(f"{out_dir / name / shard.part}.parquet: uids not row-aligned with {shard.path}")
        for field, column in zip(part.schema, part.columns):
            if field.name != "uid":
                table = table.append_column(field, column)
    check_select(select, table.column_names)
    frame = pl.from_arrow(table)
    selected = frame.filter(_select_mask(frame, select)).to_arrow()
    atomic_write_table(selected.cast(table.schema), out_dir / SUBSET / f"{shard.part}.parquet")
    stats = {"part": shard.part, "rows": selected.num_rows, "rows_in": table.num_rows}
    mark_done(out_dir / SUBSET, shard.part, stats)
    return stats


def _select_mask(frame: pl.DataFrame, select: str) -> pl.Series:
    """The select expression's value per row, NaN read as NULL (see the module docstring)."""
    import polars.selectors as cs

    nulled = frame.with_columns(cs.float().fill_nan(None))
    return nulled.with_columns(pl.sql_expr(select).fill_null(False).alias("__curate_mask"))["__curate_mask"]


def _spark_filter(frame, select: str):
    """``frame.filter(select)`` with NaN read as NULL in float columns; the rows keep their NaN."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    floats = [f for f in frame.schema.fields if isinstance(f.dataType, (FloatType, DoubleType))]
    if not floats:
        return frame.filter(F.expr(select))
    saved = {f"__curate_nan_{i}": F.col(f.name) for i, f in enumerate(floats)}
    nulled = frame.withColumns(saved).withColumns(
        {f.name: F.nanvl(F.col(f.name), F.lit(None).cast(f.dataType)) for f in floats})
    kept = nulled.filter(F.expr(select))
    return kept.withColumns({f.name: F.col(f"__curate_nan_{i}") for i, f in enumerate(floats)}).drop(*saved)


def run_subset_spark(pool_dir: Path, out_dir: Path, stage_names: list[str], select: str, *, spark) -> dict:
    from curate.engines import spark as spark_engine

    fingerprint = _fingerprint(select, out_dir, stage_names)
    subset_dir = out_dir / SUBSET
    if not _prepare(out_dir, fingerprint):
        write_manifest(subset_dir, stage=SUBSET, status="running", fingerprint=fingerprint, select=select,
                       stages=stage_names, engine="spark", layout=spark_engine.LAYOUT)
        frame = spark_engine.read_pool(spark, scan_shards(pool_dir))
        rows_in = frame.count()
        for name in stage_names:
            frame = frame.join(spark_engine.read_parts(spark, out_dir / name), on="uid", how="left")
        check_select(select, frame.columns)
        rows = spark_engine.write_parts(_spark_filter(frame, select), subset_dir)
        write_manifest(subset_dir, stage=SUBSET, status="complete", fingerprint=fingerprint, select=select,
                       stages=stage_names, engine="spark", layout=spark_engine.LAYOUT, rows=rows, rows_in=rows_in)
    return finish(out_dir)


def finish(out_dir: Path) -> dict:
    """Write OUT/subset.npy from the selected uids; return the subset manifest."""
    started = time.perf_counter()
    pairs = [uid_pairs(pq.read_table(p, columns=["uid"]).column("uid")) for p in sorted((out_dir / SUBSET).glob("part-*.parquet"))]
    all_pairs = np.concatenate(pairs) if pairs else np.empty(0, dtype="u8,u8")
    count = write_datacomp_subset(all_pairs, out_dir / SUBSET_NPY)
    log.info("wrote %s (%d uids) in %.2fs", out_dir / SUBSET_NPY, count, time.perf_counter() - started)
    return read_manifest(out_dir / SUBSET)
