"""Run a recipe, or one stage, on either engine.

``run_recipe``: check the pool (uids well formed and unique, shards agreeing on column types),
check every stage's config and the ``select`` expression before any stage runs, run each stage
in order (each skips itself if already complete with the same fingerprint, and resumes unfinished
partitions), select the subset, write OUT/subset.npy and OUT/report.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from curate.contract import Stage
from curate.engines import Session, open_session
from curate.pool import check_pool_schema, check_unique_uids, scan_shards
from curate.recipe import Recipe
from curate.reports.summary import build_report, summary
from curate.runio import atomic_write_json, read_json
from curate.stages import get_stage
from curate.steps import subset

log = logging.getLogger(__name__)


def check_pool(pool_dir: Path, out_dir: Path) -> int:
    """Validate every uid of the pool and its shards' schemas once; cached per shard list."""
    shards = scan_shards(pool_dir)
    key = [[s.path.name, s.path.stat().st_size, s.path.stat().st_mtime_ns] for s in shards]
    cache = out_dir / "_pool_check.json"
    if cache.exists() and read_json(cache).get("shards") == key:
        return read_json(cache)["rows"]
    check_pool_schema(shards)
    rows = check_unique_uids(pool_dir)
    atomic_write_json({"shards": key, "rows": rows}, cache)
    return rows


def run_stage(stage: Stage | str, cfg: Any, pool_dir: Path, out_dir: Path, *, engine: str = "local",
              workers: int | None = None, spark=None, session: Session | None = None) -> dict:
    stage = get_stage(stage) if isinstance(stage, str) else stage
    if session is not None:
        return session.run_stage(stage, cfg, pool_dir, out_dir)
    with open_session(engine, workers=workers, spark=spark) as opened:
        return opened.run_stage(stage, cfg, pool_dir, out_dir)


def preflight(recipe: Recipe, pool_dir: Path) -> None:
    """Everything that can be checked before data is read: each stage's description (a model that
    does not load, a malformed metadata list) and the select expression against the columns the
    pool and the recipe's stages will have."""
    for stage, cfg in recipe.stages:
        if stage.describe is not None:
            stage.describe(cfg)
    subset.check_select_plan(recipe.select, scan_shards(pool_dir), [stage for stage, _ in recipe.stages])


def run_recipe(recipe: Recipe, pool_dir: Path, out_dir: Path, *, engine: str = "local",
               workers: int | None = None, master: str | None = None, spark=None,
               session: Session | None = None) -> dict:
    if session is None:
        with open_session(engine, workers=workers, master=master, spark=spark) as opened:
            return run_recipe(recipe, pool_dir, out_dir, session=opened)
    started = time.perf_counter()
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = check_pool(pool_dir, out_dir)
    preflight(recipe, pool_dir)
    log.info("pool %s: %d rows; recipe %s (%d stages) on the %s engine", pool_dir, rows, recipe.name,
             len(recipe.stages), session.engine)
    atomic_write_json({"recipe": recipe.as_dict(), "pool": str(pool_dir), "engine": session.engine},
                      out_dir / "_run.json")
    for stage, cfg in recipe.stages:
        session.run_stage(stage, cfg, pool_dir, out_dir)
    subset.run_subset(pool_dir, out_dir, recipe.stage_names, recipe.select, session)
    report = build_report(pool_dir, out_dir, recipe.as_dict(), session.engine,
                          seconds=round(time.perf_counter() - started, 2))
    log.info("run finished in %.1fs\n%s", report["seconds"], summary(report))
    return report
