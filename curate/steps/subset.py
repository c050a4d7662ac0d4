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

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate import tarindex
from curate.contract import Stage
from curate.engines import Session
from curate.engines.plan import prepare_output, require_local_layout
from curate.errors import PoolError, RecipeError
from curate.fingerprint import digest, file_signature
from curate.outputs import directory_lock
from curate.pool import Shard, parquet_file, read_shard, scan_shards, shard_columns
from curate.runio import atomic_write_table, done_stats, is_done, mark_done, read_manifest, write_manifest
from curate.selection import Select, evaluate, parse_select
from curate.uid import uid_pairs, write_datacomp_subset

log = logging.getLogger(__name__)

SUBSET = "subset"
SUBSET_NPY = "subset.npy"
LAYOUT = "pool-shards"
MASK = "__curate_mask"


def check_select(select: Select, schema: pa.Schema) -> None:
    """The expression names only columns ``schema`` has, and is boolean over them."""
    missing = [c for c in select.columns() if c not in schema.names]
    if missing:
        raise RecipeError(f"select {select.text!r} names unknown column(s) {missing}; available: {sorted(schema.names)}")
    try:
        kind = pl.from_arrow(schema.empty_table()).select(pl.sql_expr(select.sql).alias(MASK)).schema[MASK]
    except Exception as error:  # polars raises several error types for ill-typed SQL
        raise RecipeError(f"select {select.text!r} cannot be evaluated over these columns ({error})") from None
    if kind not in (pl.Boolean, pl.Null):
        raise RecipeError(f"select {select.text!r} gives {kind}, not a boolean; e.g. write \"score_clip >= 0.3\", "
                          f"not \"score_clip\"")


def check_select_plan(select: str, shards: list[Shard], stages: list[Stage]) -> Select:
    """Before any stage runs: ``select`` against the pool's columns and what the stages will add."""
    fields = list(parquet_file(shards[0].path).schema_arrow)
    for stage in stages:
        fields += [field for field in stage.adds if field.name not in {f.name for f in fields}]
    parsed = parse_select(select)
    check_select(parsed, pa.schema(fields))
    return parsed


def _inputs(select: Select, out_dir: Path, stage_names: list[str], pool_dir: Path) -> dict[str, str]:
    inputs = {"select": select.sql, **{f"stage {name}": read_manifest(out_dir / name)["fingerprint"] for name in stage_names}}
    inputs.update({f"pool shard {shard.path.name}": file_signature(shard.path) for shard in scan_shards(pool_dir)})
    if tarindex.image_column(pool_dir):
        inputs["tar images"] = tarindex.index_signature(pool_dir)
    return inputs



def run_subset(pool_dir: Path, out_dir: Path, stage_names: list[str], select: str, session: Session) -> dict:
    """Select rows over the stages' columns into OUT/subset/ and OUT/subset.npy (or keep an identical one)."""
    with directory_lock(out_dir):
        return _run_subset(Path(pool_dir), Path(out_dir), stage_names, select, session)


def _run_subset(pool_dir: Path, out_dir: Path, stage_names: list[str], select: str, session: Session) -> dict:
    parsed = parse_select(select)
    inputs = _inputs(parsed, out_dir, stage_names, pool_dir)
    fingerprint = digest(inputs)
    subset_dir = out_dir / SUBSET
    if not prepare_output(subset_dir, fingerprint, inputs, SUBSET):
        fields = dict(stage=SUBSET, fingerprint=fingerprint, select=select, sql=parsed.sql, stages=stage_names,
                      engine=session.engine, input_signatures=inputs)
        if session.engine == "spark":
            rows, rows_in, layout = _subset_spark(pool_dir, out_dir, stage_names, parsed, session.spark, fields)
        else:
            rows, rows_in, layout = _subset_local(pool_dir, out_dir, stage_names, parsed, session, fields)
        write_manifest(subset_dir, status="complete", layout=layout, rows=rows, rows_in=rows_in, **fields)
    return finish(out_dir)


def _subset_local(pool_dir: Path, out_dir: Path, stage_names: list[str], select: Select, session: Session,
                  fields: dict) -> tuple[int, int, str]:
    shards = scan_shards(pool_dir)
    require_local_layout([out_dir / name for name in stage_names])
    subset_dir = out_dir / SUBSET
    write_manifest(subset_dir, status="running", layout=LAYOUT, **fields)
    tasks = [(shard, out_dir, tuple(stage_names), select) for shard in shards
             if not is_done(subset_dir, shard.part, subset_dir / f"{shard.part}.parquet")]
    session.workers.map(_subset_partition, tasks, SUBSET)
    stats = done_stats(subset_dir)
    return sum(s["rows"] for s in stats), sum(s["rows_in"] for s in stats), LAYOUT


def _subset_partition(task: tuple[Shard, Path, tuple[str, ...], Select]) -> dict:
    shard, out_dir, stage_names, select = task
    columns = shard_columns(shard.path)
    from_tars = tarindex.image_column(shard.path.parent)  # images in tar shards: read the selected rows' only
    table = read_shard(shard.path, [c for c in columns if c != from_tars])
    for name in stage_names:
        part = pq.read_table(out_dir / name / f"{shard.part}.parquet")
        if not part.column("uid").equals(table.column("uid")):
            raise PoolError(f"{out_dir / name / shard.part}.parquet: uids not row-aligned with {shard.path}")
        for field, column in zip(part.schema, part.columns):
            if field.name != "uid":
                table = table.append_column(field, column)
    check_select(select, table.schema)
    frame = pl.from_arrow(table)
    mask = select_mask(frame, select).fill_null(False).to_numpy()
    selected = table.filter(pa.array(mask))
    if from_tars:
        images = read_shard(shard.path, [from_tars], np.flatnonzero(mask)).column(from_tars)
        selected = selected.add_column(columns.index(from_tars), pa.field(from_tars, pa.binary()), images)
    atomic_write_table(selected, out_dir / SUBSET / f"{shard.part}.parquet")
    stats = {"part": shard.part, "rows": selected.num_rows, "rows_in": table.num_rows}
    mark_done(out_dir / SUBSET, shard.part, stats, out_dir / SUBSET / f"{shard.part}.parquet")
    return stats


def select_mask(frame: pl.DataFrame, select: Select) -> pl.Series:
    """The select expression's value per row, NaN read as NULL (see the module docstring)."""
    return evaluate(frame, select.sql)


def _spark_filter(frame, select: Select):
    """``frame.filter(select)`` with NaN read as NULL in float columns; the rows keep their NaN."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    floats = [f for f in frame.schema.fields if isinstance(f.dataType, (FloatType, DoubleType))]
    if not floats:
        return frame.filter(F.expr(select.sql))
    saved = {f"__curate_nan_{i}": F.col(f.name) for i, f in enumerate(floats)}
    nulled = frame.withColumns(saved).withColumns(
        {f.name: F.nanvl(F.col(f.name), F.lit(None).cast(f.dataType)) for f in floats})
    kept = nulled.filter(F.expr(select.sql))
    return kept.withColumns({f.name: F.col(f"__curate_nan_{i}") for i, f in enumerate(floats)}).drop(*saved)


def _subset_spark(pool_dir: Path, out_dir: Path, stage_names: list[str], select: Select, spark,
                  fields: dict) -> tuple[int, int, str]:
    from curate.engines import spark as spark_engine
    from curate.engines.spark_images import with_tar_images
    from curate.engines.spark_inputs import read_parts, read_pool

    write_manifest(out_dir / SUBSET, status="running", layout=spark_engine.LAYOUT, **fields)
    shards = scan_shards(pool_dir)
    columns = shard_columns(shards[0].path)
    from_tars = tarindex.image_column(pool_dir)  # images in tar shards: read after the filter
    frame = read_pool(spark, shards, [c for c in columns if c != from_tars])
    rows_in = frame.count()
    for name in stage_names:
        frame = frame.join(read_parts(spark, out_dir / name), on="uid", how="left")
    if any(c not in frame.columns for c in select.columns()):
        missing = [c for c in select.columns() if c not in frame.columns]
        raise RecipeError(f"select {select.text!r} names unknown column(s) {missing}; available: {sorted(frame.columns)}")
    selected = _spark_filter(frame, select)
    if from_tars:
        order = [*columns, *[c for c in selected.columns if c not in columns]]
        selected = with_tar_images(spark, selected, shards).select(*order)
    rows, part_files = spark_engine.write_parts(selected, out_dir / SUBSET)
    fields["part_files"] = part_files
    return rows, rows_in, spark_engine.LAYOUT


def finish(out_dir: Path) -> dict:
    """Write OUT/subset.npy from the selected uids; return the subset manifest."""
    started = time.perf_counter()
    pairs = [uid_pairs(pq.read_table(p, columns=["uid"]).column("uid")) for p in sorted((out_dir / SUBSET).glob("part-*.parquet"))]
    all_pairs = np.concatenate(pairs) if pairs else np.empty(0, dtype="u8,u8")
    count = write_datacomp_subset(all_pairs, out_dir / SUBSET_NPY)
    log.info("wrote %s (%d uids) in %.2fs", out_dir / SUBSET_NPY, count, time.perf_counter() - started)
    return read_manifest(out_dir / SUBSET)
