"""Engines run a stage over a pool: ``local`` (pyarrow/polars + a process pool, the default)
and ``spark`` (Spark DataFrames). Both write the same uid-keyed columns under OUT/<stage>/.

An engine is handed a ``Stage`` value (curate.contract) and never looks one up by name; engines
import no stage. ``open_session`` starts what an engine needs once per command (the local worker
processes, or the SparkSession) and ``Session.run_stage`` runs a stage on it. What both engines
decide the same way lives in ``curate.engines.plan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.contract import Stage
from curate.engines.workers import WorkerPool
from curate.errors import RecipeError

ENGINES = ("local", "spark")


@dataclass
class Session:
    engine: str                       # "local" | "spark"
    workers: WorkerPool               # local worker processes (also used by whole-pool steps)
    spark: Any = None                 # the SparkSession on the spark engine

    def run_stage(self, stage: Stage, cfg: Any, pool_dir: Path, out_dir: Path, frozen: Path | None = None) -> dict:
        """``frozen``: a previous run directory whose fitted statistics the stage keeps."""
        frozen = Path(frozen) if frozen is not None else None
        if self.engine == "spark":
            from curate.engines import spark

            return spark.run_stage(stage, cfg, Path(pool_dir), Path(out_dir), spark=self.spark, frozen=frozen)
        from curate.engines import local

        return local.run_stage(stage, cfg, Path(pool_dir), Path(out_dir), self.workers, frozen)


@contextmanager
def open_session(engine: str = "local", *, workers: int | None = None, master: str | None = None,
                 spark: Any = None) -> Iterator[Session]:
    """The engine's session for one command; worker processes are stopped at the end (a
    SparkSession is left to its owner: spark-submit, or the caller that passed ``spark``)."""
    if engine not in ENGINES:
        raise RecipeError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    if engine == "spark" and spark is None:
        from curate.engines.spark import get_spark

        spark = get_spark(master)
    with WorkerPool(workers) as pool:
        yield Session(engine, pool, spark)
