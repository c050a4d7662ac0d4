"""The embedded demo, end to end (what `make demo` runs).

1. generate the synthetic demo pool with known defects (curate.demo.pool) under OUT/source;
2. serve it from a loopback HTTP server and download it for real with img2dataset into the
   pool OUT/pool (failed downloads stay as rows with a status);
3. put the ground truth beside the pool (OUT/pool/_ground_truth.parquet) for the report;
4. when the recipe embeds (stage ``embed`` without ``pretrained``), train the demo's DFN (Fang
   et al. 2023): a trusted set of clean samples generated with a seed disjoint from the pool's
   (OUT/trusted, read from disk, no HTTP), open_clip's trainer on it (curate.steps.train_dfn) into
   OUT/dfn/dfn.pt, and point ``embed.pretrained`` at it, so the score stage scores with it;
5. run the demo recipe (jobs/recipes/demo.yaml) with OUT as the run directory: stage
   columns under OUT/<stage>/, the subset under OUT/subset/, OUT/subset.npy, OUT/report.json;
6. reshard the subset into webdataset shards (OUT/shards), write OUT/report.html and execute
   notebooks/walkthrough.ipynb on the run (OUT/walkthrough.ipynb, with its outputs).

Each step is skipped when its output is already complete, so a re-run resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.demo.pool import make_demo_pool, materialize_urls
from curate.demo.server import serve
from curate.engines import Session
from curate.pipeline import run_recipe
from curate.pool import POOL_INFO, pool_info
from curate.recipe import load_recipe
from curate.reports.truth import GROUND_TRUTH
from curate.runio import atomic_write_json, atomic_write_table, read_json
from curate.steps.ingest import ingest

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 3.0  # the demo's slow URLs answer after 30 s; img2dataset gives up after this
TRUSTED_SEED = 1_000_003  # the DFN's trusted set; pools of different seeds share no uid or image
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "walkthrough.ipynb"
TRUSTED_N = 3000          # its size, whatever the pool's: more trusted pairs beat more epochs (below)


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


def download(source: Path, pool: Path, workers: int | None, output_format: str = "parquet") -> None:
    info = pool_info(pool) if pool.is_dir() else None
    if info and info.get("status", "complete") == "complete" and info.get("output_format", "parquet") == output_format:
        log.info("demo pool already downloaded to %s", pool)
        return
    with serve(source) as base_url:
        urls_path = source / "_urls_resolved.parquet"
        atomic_write_table(materialize_urls(source / "urls.parquet", base_url), urls_path)
        log.info("serving the demo pool at %s; downloading with img2dataset", base_url)
        ingest(urls_path, pool, processes=max(1, min(workers or 2, 2)), threads=32,
               timeout=DOWNLOAD_TIMEOUT, output_format=output_format)
    shutil.copyfile(source / "ground_truth.parquet", pool / GROUND_TRUTH)


def prepare_trusted(source: Path, pool: Path, n: int, seed: int) -> None:
    """A clean demo set as a pool, straight from the generated files (no HTTP round trip)."""
    done = source / "_generated.json"
    if done.exists() and read_json(done) == {"n": n, "seed": seed, "clean_only": True} and (pool / "00000.parquet").exists():
        return
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(pool, ignore_errors=True)
    make_demo_pool(source, n=n, seed=seed, clean_only=True)
    urls = pq.read_table(source / "urls.parquet")
    images = [(source / "images" / url.rsplit("/", 1)[-1]).read_bytes() for url in urls.column("url").to_pylist()]
    atomic_write_table(pa.table({"uid": urls.column("uid"), "text": urls.column("caption"),
                                 "jpg": pa.array(images, pa.binary())}), pool / "00000.parquet")
    atomic_write_json({"status": "complete", "command": "demo", "source": str(source), "rows": len(images),
                       "shard_files": {"00000.parquet": len(images)}}, pool / POOL_INFO)
    atomic_write_json({"n": n, "seed": seed, "clean_only": True}, done)


def prepare_dfn(out_dir: Path) -> Path:
    """Train (or reuse) the demo DFN on TRUSTED_N clean samples; its checkpoint.

    Measured on the 3,000-sample demo pool (AUC of the DFN cosine, clean vs mismatched
    captions): 1,500 trusted pairs x 20 epochs 0.958, x 40 epochs 0.906 (over-fits);
    3,000 pairs x 10 epochs 0.994, in the same ~2 minutes on 2 cores."""
    from curate.steps.train_dfn import TrainSettings, train_dfn

    trusted = out_dir / "trusted"
    prepare_trusted(out_dir / "trusted_source", trusted, TRUSTED_N, TRUSTED_SEED)
    train_dfn(trusted, out_dir / "dfn", TrainSettings())
    return (out_dir / "dfn" / "dfn.pt").resolve()


def run_demo(out_dir: Path = Path("out/demo"), *, n: int = 3000, seed: int = 0, recipe_path: Path,
             overrides: list[str] = (), session: Session, output_format: str = "parquet") -> dict:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path, list(overrides))
    prepare_source(out_dir / "source", n, seed)
    download(out_dir / "source", out_dir / "pool", session.workers.workers, output_format)
    if any(stage.name == "embed" and cfg.pretrained is None for stage, cfg in recipe.stages):
        checkpoint = prepare_dfn(out_dir)
        recipe = load_recipe(recipe_path, [*overrides, f"embed.pretrained={checkpoint}"])  # also over pretrained=null
    report = run_recipe(recipe, out_dir / "pool", out_dir, session=session)
    outputs = training_outputs(out_dir, session)
    log.info("demo finished in %.1fs: %s, %s, %s, %s", time.perf_counter() - started, out_dir / "subset",
             out_dir / "subset.npy", out_dir / "report.json", ", ".join(map(str, outputs)))
    return report


def training_outputs(out_dir: Path, session: Session) -> list[Path]:
    """What follows a run: the subset as webdataset shards, the HTML report, the walkthrough
    notebook executed on the run (when nbclient is installed: the test extra, which make installs)."""
    from curate.reports.html import write_html_report
    from curate.steps.reshard import ReshardConfig, reshard

    reshard(out_dir, out_dir / "shards", ReshardConfig(shard_size=1000), session=session)
    outputs = [out_dir / "shards", write_html_report(out_dir)]
    notebook = execute_notebook(NOTEBOOK, out_dir)
    return outputs + ([notebook] if notebook else [])


def execute_notebook(notebook: Path, run_dir: Path) -> Path | None:
    """Run the notebook top to bottom on run_dir (CURATE_RUN); save it with its outputs beside the run."""
    try:
        import nbclient
        import nbformat
    except ImportError:
        log.warning("nbclient not installed (pip install -e '.[test]'): %s not executed", notebook.name)
        return None
    target = run_dir / notebook.name
    cells = nbformat.read(notebook, as_version=4)
    previous = os.environ.get("CURATE_RUN")
    os.environ["CURATE_RUN"] = str(run_dir.resolve())  # the kernel inherits the environment
    try:
        nbclient.NotebookClient(cells, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(notebook.parents[1])}}).execute()
    finally:
        os.environ.pop("CURATE_RUN") if previous is None else os.environ.update(CURATE_RUN=previous)
    nbformat.write(cells, target)
    return target
