"""The Spark engine: the same stages through Spark's own DataFrame machinery.

Reads the pool with ``spark.read.parquet`` (any Hadoop filesystem), joins columns of earlier
stages by uid, runs the stage's per-batch function through ``mapInArrow``, and fits global
statistics as ``mapInArrow(partial)`` -> ``groupBy(keys).sum`` -> ``filter(having)`` ->
collect -> finalize. No scheduler or shuffle of our own.

A stage is written to a temporary directory and moved into OUT/<stage>/ as
part-NNNNN.parquet only when the Spark job has succeeded, then marked complete; a failed or
killed job leaves nothing a later stage would read. Within a job, Spark's task retries are
the resume mechanism; a completed stage is skipped on re-run.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curate.engines import plan as planning
from curate.pool import Shard, scan_shards
from curate.runio import read_manifest, write_manifest
from curate.contract import Stage

log = logging.getLogger(__name__)

LAYOUT = "spark"


def get_spark(master: str | None = None, app: str = "curate"):
    """The active SparkSession, or a new one: ``master`` if given, spark-submit's if run
    under it, else local[*]. Python workers use this interpreter (the project's venv)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # launched by spark-submit
    master = master or (None if submitted else "local[*]")
    builder = SparkSession.builder.appName(app)
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # a local master talks to itself only: keep the driver on loopback, whatever the
        # hostname resolves to
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    builder = (builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.parquet.compression.codec", "zstd")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", os.environ.get("CURATE_SPARK_SHUFFLE_PARTITIONS", "8")))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_pool(spark, shards: list[Shard], columns: list[str] | None = None):
    frame = spark.read.parquet(*[str(s.path) for s in shards])
    return frame.select(*columns) if columns is not None else frame


def read_parts(spark, directory: Path):
    """A stage's or sidecar's data files only (part-*.parquet), not artifacts beside them."""
    return spark.read.parquet(*[str(p) for p in sorted(directory.glob("part-*.parquet"))])


def input_frame(spark, plan: planning.Plan, shards: list[Shard], out_dir: Path):
    frame = read_pool(spark, shards, plan.sources[planning.POOL])
    for name, columns in plan.sources.items():
        if name != planning.POOL:
            upstream = read_parts(spark, plan.source_dirs[name]).select("uid", *columns)
            frame = frame.join(upstream, on="uid", how="left")
    return frame


def run_stage(stage: Stage, cfg: Any, pool_dir: Path, out_dir: Path, *, spark=None) -> dict:
    spark = spark or get_spark()
    shards = scan_shards(pool_dir)
    plan = planning.make_plan(stage, cfg, shards, out_dir)
    if planning.prepare_stage_dir(plan):
        log.info("%s: complete in %s, skipping", stage.name, plan.stage_dir)
        return read_manifest(plan.stage_dir)
    write_manifest(plan.stage_dir, **planning.manifest_fields(plan, "spark", LAYOUT, "running"))
    started = time.perf_counter()
    frame = input_frame(spark, plan, shards, out_dir)
    artifact = _fit(plan, frame, shards, out_dir) if stage.fit else None
    fit_seconds, started = round(time.perf_counter() - started, 3), time.perf_counter()
    if stage.group_by is not None:
        output = _apply_groups(stage, cfg, artifact, frame)
    else:
        output = frame.mapInArrow(_apply_batches(stage, cfg, artifact), _spark_schema(stage.output_schema()))
    rows = write_parts(output, plan.stage_dir)
    return write_manifest(plan.stage_dir, **planning.manifest_fields(
        plan, "spark", LAYOUT, "complete", rows=rows,
        artifact_rows=None if artifact is None else artifact.num_rows, fit_seconds=fit_seconds,
        seconds_last_run=round(time.perf_counter() - started, 3)))  # the apply only, as on the local engine


def _fit(plan: planning.Plan, frame, shards: list[Shard], out_dir: Path) -> pa.Table:
    from pyspark.sql import functions as F

    artifact = planning.load_artifact(plan.stage_dir)
    if artifact is not None:
        return artifact
    stage, fit, cfg = plan.stage, plan.stage.fit, plan.cfg
    empty = stage.input_columns(planning.empty_input(plan, shards, out_dir), cfg)
    for _ in range(fit.passes):
        partial_schema = fit.partial(empty, cfg, artifact).schema
        sums = [F.sum(c).alias(c) for c in partial_schema.names if c not in fit.keys]
        merged = frame.mapInArrow(_partial_batches(stage, cfg, artifact), _spark_schema(partial_schema))
        merged = merged.groupBy(*fit.keys).agg(*sums)
        having = fit.having(cfg)
        if having:
            merged = merged.filter(F.expr(having))
        merged_table = merged.orderBy(*fit.keys).toArrow().cast(partial_schema)
        artifact = fit.finalize(merged_table, cfg, artifact)
    planning.save_artifact(plan, artifact)
    return artifact


def _partial_batches(stage: Stage, cfg: Any, previous: pa.Table | None):
    def partials(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from stage.fit.partial(stage.input_columns(pa.Table.from_batches([batch]), cfg), cfg, previous).to_batches()

    return partials


def _apply_batches(stage: Stage, cfg: Any, artifact: pa.Table | None):
    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from stage.run_apply(pa.Table.from_batches([batch]), cfg, artifact).to_batches()

    return apply


GROUP_KEY = "_group"


def _apply_groups(stage: Stage, cfg: Any, artifact: pa.Table | None, frame):
    """Per-group apply: key each row (mapInArrow), rows with a null key through mapInArrow,
    the others through groupBy(key).applyInArrow, one call per group with all its rows."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    def add_key(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            key = pa.chunked_array([stage.group_by(stage.input_columns(table, cfg), cfg, artifact)]).cast(pa.int64())
            yield from table.append_column(GROUP_KEY, key).to_batches()

    def apply_group(table: pa.Table) -> pa.Table:
        return stage.run_apply(table.drop_columns([GROUP_KEY]), cfg, artifact)

    keyed = frame.mapInArrow(add_key, StructType([*frame.schema.fields, StructField(GROUP_KEY, LongType())]))
    schema = _spark_schema(stage.output_schema())
    loose = keyed.filter(F.col(GROUP_KEY).isNull()).drop(GROUP_KEY).mapInArrow(_apply_batches(stage, cfg, artifact), schema)
    grouped = keyed.filter(F.col(GROUP_KEY).isNotNull()).groupBy(GROUP_KEY).applyInArrow(apply_group, schema)
    return grouped.unionByName(loose)


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def write_parts(frame, target_dir: Path) -> int:
    """Write a DataFrame as parquet into target_dir/part-NNNNN.parquet, only once Spark's job
    has succeeded (write to a temporary directory, then move the files in)."""
    tmp_dir = target_dir.parent / f".{target_dir.name}.spark-tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    frame.write.mode("overwrite").parquet(str(tmp_dir))
    target_dir.mkdir(parents=True, exist_ok=True)
    for old in target_dir.glob("part-*.parquet"):
        old.unlink()
    rows = 0
    for index, path in enumerate(sorted(tmp_dir.glob("part-*.parquet"))):
        rows += pq.ParquetFile(path).metadata.num_rows
        os.replace(path, target_dir / f"part-{index:05d}.parquet")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return rows
