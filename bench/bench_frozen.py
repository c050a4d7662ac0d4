"""Benchmark: incremental curation (`curate run --frozen`) against refitting, on a DataComp-format
pool that grows by one shard.

A synthetic DataComp pool (curate.demo.synthetic: Zipfian captions in several languages, B/32
embeddings with planted near-duplicates) of SHARDS shards; the previous run curates all but the
last, then the grown pool is curated twice with the same recipe (score by fraction, ALIGN, MetaCLIP
with t from the pool, cluster, SemDeDup, DBP): frozen against the previous run, and refitted from
scratch. Printed per run: wall time and the fit time of its stages (manifest fit_seconds), and
for the rows the previous run saw, how many changed their selection (frozen must change none),
plus how many new rows each run selects.

    .venv/bin/python bench/bench_frozen.py [--shards 10] [--rows-per-shard 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPE = {"stages": {
    "align": {},
    "score": {"embeddings": "b32", "score_column": None, "fraction": 0.7},
    "metaclip": {"t": None, "tail_proportion": 0.1},
    "cluster": {"embeddings": "b32", "clusters": 100},
    "semdedup": {"embeddings": "b32", "eps": None, "relative_eps": 0.1},
    "dbp": {"embeddings": "b32", "keep_fraction": 0.8, "clusters": 20}},
    "select": "(align_keep OR align_reason <> 'shared_text') AND score_keep AND metaclip_keep AND dbp_keep"}


def run(recipe, pool: Path, out: Path, workers: int, frozen: Path | None = None) -> dict:
    from curate import pipeline

    started = time.perf_counter()
    report = pipeline.run_recipe(recipe, pool, out, workers=workers, frozen=frozen)
    fit = sum(json.loads((out / stage / "_manifest.json").read_text()).get("fit_seconds") or 0
              for stage in recipe.stage_names)
    return {"seconds": time.perf_counter() - started, "fit_seconds": fit, "rows_out": report["rows_out"],
            "selected": set(np.load(out / "subset.npy").tolist())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from curate.demo.synthetic import write_datacomp_pool
    from curate.recipe import parse_recipe
    from curate.steps.datacomp import import_datacomp
    from curate.uid import uid_pairs

    work = Path(tempfile.mkdtemp(prefix="bench_frozen_"))
    try:
        source = write_datacomp_pool(work / "src", shards=args.shards, rows_per_shard=args.rows_per_shard,
                                     seed=3, models=("b32",))
        old = work / "old_src"
        old.mkdir()
        for path in sorted(source.iterdir())[:2 * (args.shards - 1)]:  # NNNNNNNN.npz + .parquet per shard
            shutil.copy(path, old / path.name)
        import_datacomp(old, work / "old_pool")
        import_datacomp(source, work / "pool")
        recipe = parse_recipe(RECIPE, "bench_frozen")
        previous = run(recipe, work / "old_pool", work / "previous", args.workers)
        frozen = run(recipe, work / "pool", work / "frozen", args.workers, frozen=work / "previous")
        refit = run(recipe, work / "pool", work / "refit", args.workers)
        old_uids = [uid for path in sorted(old.glob("*.parquet")) for uid in pq.read_table(path, columns=["uid"])
                    .column("uid").to_pylist()]
        old_pairs = set(uid_pairs(old_uids).tolist())
        rows_old, rows_new = len(old_uids), args.rows_per_shard
        print(f"pool: {args.shards - 1} shards ({rows_old:,} rows) grown by one ({rows_new:,} rows); {args.workers} workers")
        print(f"{'run':<10}{'wall s':>9}{'fit s':>8}{'selected':>10}{'old rows changed':>18}{'new rows kept':>15}")
        for name, result in (("previous", previous), ("frozen", frozen), ("refit", refit)):
            changed = len((result["selected"] & old_pairs) ^ previous["selected"]) if name != "previous" else 0
            new = len(result["selected"] - old_pairs)
            print(f"{name:<10}{result['seconds']:>9.1f}{result['fit_seconds']:>8.1f}{result['rows_out']:>10,}"
                  f"{changed:>18,}{new:>15,}")
        print(f"frozen / refit wall time: {frozen['seconds'] / refit['seconds']:.2f}x; "
              f"refit changes the selection of {len((refit['selected'] & old_pairs) ^ previous['selected']) / rows_old:.2%} "
              f"of the rows already curated")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
