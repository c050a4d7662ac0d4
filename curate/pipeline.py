"""Run a recipe, or one stage, on either engine.

``run_recipe``: check the pool (uids well formed and unique), run each stage in order
(each skips itself if already complete with the same fingerprint, and resumes unfinished
partitions), select the subset, write OUT/subset.npy and OUT/report.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from curate.pool import check_unique_uids, scan_shards
from curate.recipe import Recipe
from curate.reports.summary import build_report, summary
from curate.runio import atomic_write_json, read_json
from curate.contract import RecipeError
from curate.stages import get_stage

log = logging.getLogger(__name__)


def check_pool(pool_dir: Path, out_dir: Path) -> int:
    """Validate every uid of the pool once; the result is cached per shard list."""
    shards = scan_shards(pool_dir)
    key = [[s.path.name, s.path.stat().st_size, s.path.stat().st_mtime_ns] for s in shards]
    cache = out_dir / "_pool_check.json"
    if cache.exists() and read_json(cache).get("shards") == key:
        return read_json(cache)["rows"]
    rows = check_unique_uids(pool_dir)
    atomic_write_json({"shards": key, "rows": rows}, cache)
    return rows


def run_stage(name: str, cfg: Any, pool_dir: Path, out_dir: Path, *, engine: str = "local",
              workers: int | None = None, spark=None) -> dict:
    stage = get_stage(name)
    if engine == "local":
        from curate.engines import local

        return local.run_stage(stage, cfg, pool_dir, out_dir, workers=workers)
    if engine == "spark":
        from curate.engines import spark as spark_engine

        return spark_engine.run_stage(stage, cfg, pool_dir, out_dir, spark=spark)
    raise RecipeError(f"unknown engine {engine!r}; choose local or spark")


def run_recipe(recipe: Recipe, pool_dir: Path, out_dir: Path, *, engine: str = "local",
               workers: int | None = None, master: str | None = None) -> dict:
    started = time.perf_counter()
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spark = None
    if engine == "spark":
        from curate.engines.spark import get_spark

        spark = get_spark(master)
    rows = check_pool(pool_dir, out_dir)
    log.info("pool %s: %d rows; recipe %s on the %s engine", pool_dir, rows, recipe.name, engine)
    atomic_write_json({"recipe": recipe.as_dict(), "pool": str(pool_dir), "engine": engine}, out_dir / "_run.json")
    for name, cfg in recipe.stages:
        run_stage(name, cfg, pool_dir, out_dir, engine=engine, workers=workers, spark=spark)
    stage_names = [name for name, _ in recipe.stages]
    from curate.steps import subset

    if engine == "spark":
        subset.run_subset_spark(pool_dir, out_dir, stage_names, recipe.select, spark=spark)
    else:
        subset.run_subset_local(pool_dir, out_dir, stage_names, recipe.select, workers=workers)
    report = build_report(pool_dir, out_dir, recipe.as_dict(), engine)
    report["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(report, out_dir / "report.json")
    log.info("run finished in %.1fs\n%s", report["seconds"], summary(report))
    return report
