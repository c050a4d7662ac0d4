"""The Spark engine: the same stages through Spark's own DataFrame machinery.

A stage that reads only the pool gets one task per pool shard, which reads its shard with pyarrow as
the local engine does (``stage_input``); any other reads its inputs with ``spark.read.parquet`` and
joins them by uid (spark_inputs). It runs the stage's per-batch function through ``mapInArrow``, and fits global
statistics as ``mapInArrow(partial)`` -> ``groupBy(keys).sum`` -> ``filter(having)`` ->
collect -> finalize. No scheduler or shuffle of our own.

A stage is written to a temporary directory and moved into OUT/<stage>/ as
part-NNNNN.parquet only when the Spark job has succeeded, then marked complete; a failed or
killed job leaves nothing a later stage would read. A per-batch apply's tasks write their own
files with pyarrow (spark_batches.BatchWrite) and the driver moves only those its successful
task attempts reported; a per-group apply goes through Spark's writer. Within a job, Spark's
task retries are the resume mechanism; a completed stage is skipped on re-run. Input frames:
spark_inputs; the functions run in Python workers: spark_batches.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract import Stage
from curate.engines import plan as planning
from curate.engines.failures import MARKER, check_shards_unchanged, local_failures, spark_failure
from curate.engines.spark_batches import (
    GROUP_KEY,
    LOOSE,
    WRITTEN,
    BatchKey,
    BatchPartial,
    BatchWrite,
    ShardReader,
    group_apply,
)
from curate.engines.spark_inputs import input_frame, joins
from curate.errors import PoolError
from curate.fingerprint import tail_digest
from curate.pool import Shard, scan_shards
from curate.progress import interval
from curate.runio import read_manifest, write_manifest

log = logging.getLogger(__name__)

LAYOUT = "spark"

# Spark SQL settings curate uses unless the user set them (--conf, spark-defaults.conf). Arrow batches:
# Spark hands mapInArrow 10,000 rows at a time by default, and a stage's per-call cost (a fastText call,
# the matcher's lookups, a histogram) then dominates: on 1M rows, Spark local[2] took 7.2 s for basic
# against 3.7 s locally, and 3.8 s with batches of up to 1M rows (bench/bench_basic.py, bench_metaclip.py,
# bench_score.py). maxBytesPerBatch bounds a batch of wide rows (images, embeddings) at 64 MiB.
SQL_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "1000000",
    "spark.sql.execution.arrow.maxBytesPerBatch": str(64 << 20),
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.sql.shuffle.partitions": "8",  # CURATE_SPARK_SHUFFLE_PARTITIONS, read in get_spark, overrides it
}


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
    spark = builder.config("spark.ui.showConsoleProgress", "false").getOrCreate()
    shuffle = {"spark.sql.shuffle.partitions": os.environ.get("CURATE_SPARK_SHUFFLE_PARTITIONS", "8")}
    for key, value in {**SQL_DEFAULTS, **shuffle}.items():
        if spark.conf.get(key, None) is None:  # not set by the user (spark-submit --conf, spark-defaults.conf)
            spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_stage(stage: Stage, cfg: Any, pool_dir: Path, out_dir: Path, *, spark=None, frozen: Path | None = None) -> dict:
    spark = spark or get_spark()
    shards = scan_shards(pool_dir)
    plan = planning.make_plan(stage, cfg, shards, out_dir, frozen)
    if planning.prepare_stage_dir(plan):
        log.info("%s: complete in %s, skipping", stage.name, plan.stage_dir)
        return read_manifest(plan.stage_dir)
    write_manifest(plan.stage_dir, **planning.manifest_fields(plan, "spark", LAYOUT, "running"))
    try:
        with progress_lines(spark, stage.name):
            return _run(plan, shards, out_dir, spark)
    except Exception as error:
        failure = spark_failure(error, shards, stage.name)
        if failure is None:
            raise
        raise failure from None


@contextmanager
def progress_lines(spark, label: str) -> Iterator[None]:
    """While a stage runs on Spark, log its active Spark stages' finished/total tasks every
    CURATE_PROGRESS_SECONDS (curate.progress), so a run whose output is a file shows where it is."""
    stop = threading.Event()

    def watch() -> None:
        tracker = spark.sparkContext.statusTracker()
        while not stop.wait(interval()):
            for stage_id in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage_id)
                if info is not None:
                    log.info("%s: Spark stage %d: %d/%d tasks done, %d running", label, stage_id,
                             info.numCompletedTasks, info.numTasks, info.numActiveTasks)

    thread = threading.Thread(target=watch, name=f"curate-progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run(plan: planning.Plan, shards: list[Shard], out_dir: Path, spark) -> dict:
    from pyspark import StorageLevel

    stage, cfg = plan.stage, plan.cfg
    started = time.perf_counter()
    source = stage_input(spark, plan, shards, out_dir)
    installed = planning.install_frozen(plan)  # a frozen run's artifact, or one a killed run saved
    if stage.fit and source.reader is None and planning.load_artifact(plan.stage_dir) is None and joins(plan, shards):
        # computed once per fit pass and once more to apply: keep the joined rows on the executors'
        # disks instead of joining again each time (dbp at 1M rows: 69 -> 47 s on local[2]; in memory
        # the default 1 GB heap runs out)
        source = Input(source.frame.persist(StorageLevel.DISK_ONLY))
    try:
        artifact = _fit(plan, source) if stage.fit else installed
        fit_seconds, started = round(time.perf_counter() - started, 3), time.perf_counter()
        if stage.group_by is not None:
            rows, part_files = write_parts(_apply_groups(stage, cfg, artifact, source.frame), plan.stage_dir)
        else:
            rows, part_files = write_task_parts(source, stage, cfg, artifact, plan.stage_dir)
    finally:
        source.frame.unpersist()
    if rows != sum(shard.rows for shard in shards):  # a source missing uids of the pool
        raise PoolError(f"stage {stage.name}: wrote {rows} rows, but the pool has {sum(s.rows for s in shards)}; "
                        f"an input ({', '.join(map(str, plan.source_dirs.values())) or 'the pool'}) lacks rows of it")
    check_shards_unchanged(stage.name, shards, plan.inputs)
    return write_manifest(plan.stage_dir, **planning.manifest_fields(
        plan, "spark", LAYOUT, "complete", rows=rows, part_files=part_files,
        artifact_rows=None if artifact is None else artifact.num_rows, fit_seconds=fit_seconds,
        seconds_last_run=round(time.perf_counter() - started, 3)))  # the apply only, as on the local engine


@dataclass(frozen=True)
class Input:
    """A stage's input: a DataFrame of its rows, or (``reader`` set) of pool-shard seeds whose tasks read
    their shard themselves."""
    frame: Any
    reader: ShardReader | None = None

    def without_uid(self) -> Input:
        if self.reader is None:
            return Input(self.frame.drop("uid"))
        return Input(self.frame, ShardReader([c for c in self.reader.columns if c != "uid"]))


def stage_input(spark, plan: planning.Plan, shards: list[Shard], out_dir: Path) -> Input:
    """A per-row stage that reads the pool alone gets one seed row per pool shard, and each task reads
    its shard with pyarrow as the local engine does (no parquet -> rows -> Arrow conversion in the JVM);
    any other stage gets ``input_frame``'s join."""
    if plan.stage.group_by is None and list(plan.sources) == [planning.POOL]:
        seeds = spark.createDataFrame([(str(shard.path),) for shard in shards], "path string")
        return Input(seeds.repartition(max(1, len(shards))), ShardReader(plan.sources[planning.POOL]))
    return Input(input_frame(spark, plan, shards, out_dir))


def _fit(plan: planning.Plan, source: Input) -> pa.Table:
    """The fit passes over ``frame``, without its uid column unless the stage reads uids (as on the local
    engine: decoding 32-character uids costs far more than the columns a fit reads). A pass that fails
    without uids runs again with them, so its error names the failing row."""
    artifact = planning.load_artifact(plan.stage_dir)
    if artifact is not None:
        return artifact
    stage, cfg = plan.stage, plan.cfg
    lean = source if "uid" in stage.reads(cfg) else source.without_uid()
    for number, step in enumerate(stage.fit.passes):
        try:
            table = _fit_pass(plan, lean, number, artifact)
        except Exception as error:
            if lean is source or MARKER not in str(error):
                raise
            table = _fit_pass(plan, source, number, artifact)  # raises again, naming the row
        with local_failures(stage.name, f"fit pass {step.name}: finalize", plan.stage_dir):
            artifact = step.finalize(table, cfg, artifact)
    planning.save_artifact(plan, artifact)
    return artifact


def _fit_pass(plan: planning.Plan, source: Input, number: int, previous: pa.Table | None) -> pa.Table:
    """Pass ``number``'s partials of every batch, summed by its keys, in key order."""
    from pyspark.sql import functions as F

    stage, cfg, step = plan.stage, plan.cfg, plan.stage.fit.passes[number]
    partials = source.frame.mapInArrow(BatchPartial(stage, cfg, number, previous, source.reader),
                                       _spark_schema(step.schema))
    merged = partials.groupBy(*step.keys).agg(*[F.sum(c).alias(c) for c in step.sums()])
    having = step.having(cfg) if step.having else None
    if having:
        merged = merged.filter(F.expr(having))
    merged = merged.orderBy(*step.keys) if step.keys else merged
    return merged.toArrow().select(step.schema.names).cast(step.schema)


def _apply_groups(stage: Stage, cfg: Any, artifact: pa.Table | None, frame):
    """Per-group apply: key each row (mapInArrow), then groupBy(loose, key).applyInArrow, one call per
    group with all its rows and one per batch of rows that belong to no group (BatchKey): the input
    is computed once and shuffled once."""
    from pyspark.sql.types import BooleanType, LongType, StructField, StructType

    keyed = frame.mapInArrow(BatchKey(stage, cfg, artifact), StructType([
        *frame.schema.fields, StructField(GROUP_KEY, LongType()), StructField(LOOSE, BooleanType())]))
    return keyed.groupBy(LOOSE, GROUP_KEY).applyInArrow(group_apply(stage, cfg, artifact),
                                                        _spark_schema(stage.output_schema()))


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def write_parts(frame, target_dir: Path) -> tuple[int, dict[str, list]]:
    """Write a DataFrame as parquet into target_dir/part-NNNNN.parquet, only once Spark's job
    has succeeded (write to a temporary directory, then move the files in); the rows and, per
    part file, its size and footer digest (the manifest's ``part_files``)."""
    tmp_dir = _scratch(target_dir)
    frame.write.mode("overwrite").parquet(str(tmp_dir))
    return _move_parts(tmp_dir, sorted(tmp_dir.glob("part-*.parquet")), target_dir)


def write_task_parts(source: Input, stage: Stage, cfg: Any, artifact: pa.Table | None,
                     target_dir: Path) -> tuple[int, dict[str, list]]:
    """``write_parts`` of a per-batch apply whose tasks write their own files (BatchWrite): only the files
    the job's successful task attempts reported are moved in (a failed or duplicate attempt's are not)."""
    tmp_dir = _scratch(target_dir)
    tmp_dir.mkdir(parents=True)
    writer = BatchWrite(stage, cfg, artifact, str(tmp_dir), source.reader)
    written = source.frame.mapInArrow(writer, _spark_schema(WRITTEN)).toArrow()
    return _move_parts(tmp_dir, [tmp_dir / name for name in sorted(written.column("file").to_pylist())], target_dir)


def _scratch(target_dir: Path) -> Path:
    tmp_dir = target_dir.parent / f".{target_dir.name}.spark-tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return tmp_dir


def _move_parts(tmp_dir: Path, paths: list[Path], target_dir: Path) -> tuple[int, dict[str, list]]:
    target_dir.mkdir(parents=True, exist_ok=True)
    for old in target_dir.glob("part-*.parquet"):
        old.unlink()
    rows, part_files = 0, {}
    for index, path in enumerate(paths):
        rows += pq.ParquetFile(path).metadata.num_rows
        target = target_dir / f"part-{index:05d}.parquet"
        os.replace(path, target)
        part_files[target.name] = [target.stat().st_size, tail_digest(target)]
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return rows, part_files
