"""Run a recipe, or one stage, on either engine.

``run_recipe``: check the pool (uids well formed and unique, shards agreeing on column types),
check every stage's config and the ``select`` expression before any stage runs, run each stage
in order (each skips itself if already complete with the same fingerprint, and resumes unfinished
partitions), select the subset, write OUT/subset.npy and OUT/report.json.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.contract import Stage
from curate.engines import Session, open_session
from curate.engines.frozen import check_frozen_run
from curate.errors import RecipeError, SafeguardError
from curate.fingerprint import digest
from curate.outputs import claim_run_dir, directory_lock
from curate.pool import check_pool_schema, check_unique_uids, scan_shards
from curate.recipe import Recipe
from curate.reports.decisions import stage_removals
from curate.reports.summary import build_report, summary
from curate.runio import atomic_write_json, read_json
from curate.stages import get_stage
from curate.steps import subset

log = logging.getLogger(__name__)


def check_pool(pool_dir: Path, out_dir: Path) -> int:
    """Validate every uid of the pool and its shards' schemas once; the pool's rows. Cached per shard
    list (names, sizes, modification times) in the run directory, and for every run directory on this
    machine in ``pool_check_cache`` (at 12.8M rows the check takes ~26 s, which each recipe run on the
    same pool would otherwise pay again)."""
    shards = scan_shards(pool_dir)
    key = [[s.path.name, s.path.stat().st_size, s.path.stat().st_mtime_ns] for s in shards]
    cache = out_dir / "_pool_check.json"
    shared = pool_check_cache() / f"{digest([str(Path(pool_dir).resolve()), key])}.json"
    for path in (cache, shared):
        if path.exists() and read_json(path).get("shards") == key:
            rows = read_json(path)["rows"]
            break
    else:
        check_pool_schema(shards)
        rows = check_unique_uids(pool_dir)
        try:
            atomic_write_json({"pool": str(Path(pool_dir).resolve()), "shards": key, "rows": rows}, shared)
        except OSError as error:  # a read-only home: only this run directory remembers it
            log.warning("cannot cache the pool check in %s (%s)", shared.parent, error)
    atomic_write_json({"shards": key, "rows": rows}, cache)
    return rows


def pool_check_cache() -> Path:
    """CURATE_POOL_CHECK_CACHE, default $XDG_CACHE_HOME (or ~/.cache)/curate/pool-checks."""
    configured = os.environ.get("CURATE_POOL_CHECK_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curate" / "pool-checks"


def run_stage(stage: Stage | str, cfg: Any, pool_dir: Path, out_dir: Path, *, engine: str = "local",
              workers: int | None = None, spark=None, session: Session | None = None) -> dict:
    stage = get_stage(stage) if isinstance(stage, str) else stage
    if session is None:
        with open_session(engine, workers=workers, spark=spark) as opened:
            return run_stage(stage, cfg, pool_dir, out_dir, session=opened)
    with directory_lock(out_dir):
        claim_run_dir(Path(out_dir))
        return session.run_stage(stage, cfg, pool_dir, out_dir)


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
               session: Session | None = None, strict: bool = False, frozen: Path | None = None,
               on_stage: Callable[[], None] | None = None) -> dict:
    """Run every stage, the subset and the report. ``strict``: a safeguard warning (a stage
    removing more than ``recipe.max_removed_share`` of the pool, a select keeping nothing) is an
    error (SafeguardError) instead. ``frozen``: an earlier run directory whose fitted statistics
    the stages keep instead of refitting (curate.engines.frozen). ``on_stage``: called after each
    stage is complete (the CLI uploads a remote --out then)."""
    if session is None:
        with open_session(engine, workers=workers, master=master, spark=spark) as opened:
            return run_recipe(recipe, pool_dir, out_dir, session=opened, strict=strict, frozen=frozen,
                              on_stage=on_stage)
    with directory_lock(out_dir):
        return _run_recipe(recipe, Path(pool_dir), Path(out_dir), session, strict,
                           Path(frozen) if frozen is not None else None, on_stage)


def _run_recipe(recipe: Recipe, pool_dir: Path, out_dir: Path, session: Session, strict: bool,
                frozen: Path | None, on_stage: Callable[[], None] | None) -> dict:
    started = time.perf_counter()
    if frozen is not None and frozen.resolve() == out_dir.resolve():
        raise RecipeError(f"--frozen {frozen} is the run's own --out; write the frozen run to a new directory")
    claim_run_dir(out_dir)
    rows = check_pool(pool_dir, out_dir)
    preflight(recipe, pool_dir)
    if frozen is not None:
        check_frozen_run(recipe.stages, frozen)
    log.info("pool %s: %d rows; recipe %s (%d stages) on the %s engine%s", pool_dir, rows, recipe.name,
             len(recipe.stages), session.engine, f", fits frozen from {frozen}" if frozen else "")
    atomic_write_json({"recipe": recipe.as_dict(), "pool": str(pool_dir), "engine": session.engine,
                       "frozen": str(frozen) if frozen else None}, out_dir / "_run.json")
    for number, (stage, cfg) in enumerate(recipe.stages, start=1):
        log.info("stage %d/%d %s: start", number, len(recipe.stages), stage.name)
        begun, wall = time.perf_counter(), time.time()
        manifest = session.run_stage(stage, cfg, pool_dir, out_dir, frozen)
        skipped = (out_dir / stage.name / "_manifest.json").stat().st_mtime < wall  # nothing rewritten
        stage_done(out_dir, stage.name, recipe, manifest, time.perf_counter() - begun, strict, skipped)
        if on_stage is not None and not skipped:
            on_stage()
    subset.run_subset(pool_dir, out_dir, recipe.stage_names, recipe.select, session)
    report = build_report(pool_dir, out_dir, recipe.as_dict(), session.engine,
                          seconds=round(time.perf_counter() - started, 2))
    log.info("run finished in %.1fs\n%s", report["seconds"], summary(report))
    if strict and report["warnings"]:
        raise SafeguardError("; ".join(w["message"] for w in report["warnings"]) + " (--strict)")
    return report


def stage_done(out_dir: Path, name: str, recipe: Recipe, manifest: dict, seconds: float, strict: bool,
               skipped: bool = False) -> None:
    """The log line after a stage (rows, seconds, removals by reason) and its safeguard: a stage
    removing more than the recipe's max_removed_share of the pool is a warning (--strict: an error)."""
    info = stage_removals(out_dir, name, recipe.stage_names)
    skipped = " (complete from an earlier run)" if skipped else ""
    if info is None:
        log.info("%s: done in %.1fs%s: %s rows", name, seconds, skipped, manifest.get("rows"))
        return
    reasons = ", ".join(f"{r}={n}" for r, n in info["by_reason"].items() if r != "None") or "nothing"
    log.info("%s: done in %.1fs%s: %d rows, removes %d (%s)", name, seconds, skipped, info["rows"], info["removed"], reasons)
    if info["rows"] and info["removed"] > recipe.max_removed_share * info["rows"]:
        message = (f"stage {name} removes {info['removed'] / info['rows']:.0%} of the pool ({reasons}); "
                   f"above max_removed_share {recipe.max_removed_share:g}: check that its settings suit this pool")
        if strict:
            raise SafeguardError(message + " (--strict)")
        log.warning("%s", message)
