"""The embedded demo, end to end (what `make demo` runs).

1. generate the synthetic demo pool with known defects (curate.demo_pool) under OUT/source;
2. serve it from a loopback HTTP server and download it for real with img2dataset into the
   pool OUT/pool (failed downloads stay as rows with a status);
3. put the ground truth beside the pool (OUT/pool/_ground_truth.parquet) for the report;
4. run the demo recipe (jobs/recipes/demo.yaml) with OUT as the run directory: stage
   columns under OUT/<stage>/, the subset under OUT/subset/, OUT/subset.npy, OUT/report.json.

Each step is skipped when its output is already complete, so a re-run resumes.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from curate.demo_pool import make_demo_pool, materialize_urls
from curate.demo_server import serve
from curate.ingest import ingest
from curate.pipeline import run_recipe
from curate.recipe import load_recipe
from curate.report import GROUND_TRUTH
from curate.runio import atomic_write_json, atomic_write_table, read_json

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 3.0  # the demo's slow URLs answer after 30 s; img2dataset gives up after this


def prepare_source(source: Path, n: int, seed: int) -> None:
    done = source / "_generated.json"
    if done.exists() and read_json(done) == {"n": n, "seed": seed}:
        log.info("demo pool already generated in %s", source)
        return
    shutil.rmtree(source, ignore_errors=True)
    started = time.perf_counter()
    make_demo_pool(source, n=n, seed=seed)
    atomic_write_json({"n": n, "seed": seed}, done)
    log.info("generated %d demo samples in %.1fs", n, time.perf_counter() - started)


def download(source: Path, pool: Path, workers: int | None) -> None:
    if (pool / "_pool.json").exists():
        log.info("demo pool already downloaded to %s", pool)
        return
    with serve(source) as base_url:
        urls_path = source / "_urls_resolved.parquet"
        atomic_write_table(materialize_urls(source / "urls.parquet", base_url), urls_path)
        log.info("serving the demo pool at %s; downloading with img2dataset", base_url)
        ingest(urls_path, pool, processes=max(1, min(workers or 2, 2)), threads=32,
               timeout=DOWNLOAD_TIMEOUT, shard_size=1000)
    shutil.copyfile(source / "ground_truth.parquet", pool / GROUND_TRUTH)


def run_demo(out_dir: Path = Path("out/demo"), *, n: int = 3000, seed: int = 0, recipe_path: Path,
             overrides: list[str] = (), engine: str = "local", workers: int | None = None,
             master: str | None = None) -> dict:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path, list(overrides))
    prepare_source(out_dir / "source", n, seed)
    download(out_dir / "source", out_dir / "pool", workers)
    report = run_recipe(recipe, out_dir / "pool", out_dir, engine=engine, workers=workers, master=master)
    log.info("demo finished in %.1fs: %s, %s, %s", time.perf_counter() - started,
             out_dir / "subset", out_dir / "subset.npy", out_dir / "report.json")
    return report
