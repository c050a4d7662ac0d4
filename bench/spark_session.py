"""A warm Spark local[CORES] session for the engine benches: what a recipe's later stages run in.

Spark's first job in a fresh session pays for itself, whatever the stage: the JVM compiles the
parquet, Arrow and shuffle code paths, and Python workers start and import pyarrow. On this machine
(2 cores) that is about 3 s on top of the JVM's start: an identity mapInArrow over 1M rows took 4.7 s
as a session's first job and 1.5 s as its second. ``warm_session`` runs such a job on synthetic rows
(not the bench's pool) before anything is timed, and returns how long the start and the warm-up
took, which the benches print apart, so a stage's time is its own.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa


def warm_session(cores: int, app: str = "curate-bench"):
    """(session, {"session_start_seconds", "warmup_seconds"}): a local[cores] session that has run a
    parquet -> mapInArrow -> shuffle -> parquet job through its Python workers."""
    from curate.engines.spark import get_spark

    started = time.perf_counter()
    spark = get_spark(f"local[{cores}]", app=app)
    spark.range(1).count()
    start_seconds, started = time.perf_counter() - started, time.perf_counter()
    def identity(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:  # nested: pickled by value
        yield from batches

    rows = 200_000
    frame = spark.createDataFrame(pa.table({"key": np.arange(rows) % 97, "value": np.random.default_rng(0).random(rows)}))
    with tempfile.TemporaryDirectory(prefix="curate-bench-warmup-") as scratch:
        frame.write.mode("overwrite").parquet(f"{scratch}/a")
        read = spark.read.parquet(f"{scratch}/a")
        read.mapInArrow(identity, read.schema).groupBy("key").count().write.mode("overwrite").parquet(f"{scratch}/b")
    return spark, {"session_start_seconds": round(start_seconds, 2),
                   "warmup_seconds": round(time.perf_counter() - started, 2)}
