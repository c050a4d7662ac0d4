"""Benchmark: a DataComp-format pool curated end to end on this machine (issue: DataComp small,
12.8M samples, on 2 cores and 24 GB).

1. Writes a pool exactly as DataComp releases it (curate.demo.synthetic.write_datacomp_pool:
   parquet shards of uid/url/text/original_width/original_height/clip_b32_similarity_score/
   clip_l14_similarity_score/face_bboxes/sha256 and row-aligned float16 npz with b32_img/b32_txt
   and l14_img/l14_txt; Zipfian captions in several languages, clustered embeddings with planted
   near-duplicates, score ties and NaN, boundary sizes).
2. Imports it with --link-embeddings (the npz read in place) and prints the bytes it added.
3. Runs every DataComp baseline recipe and one full recipe (basic, metaclip over the 384k list,
   score, cluster, semdedup, dbp) on the local engine, each in its own run directory, and prints
   per stage: wall time (fit + apply, from its manifest), the peak resident memory of the whole
   process tree during the recipe (sampled from /proc), and the bytes the stage wrote; plus the
   bare numpy sort of the score column (DataComp's get_threshold) as the baseline the score
   stage is measured against.

Disk: ~5.2 KB of npz per row (B/32 + L/14): 12.8M rows need ~67 GB, so check `df -h` first;
everything is deleted at the end. ``--rows 1000000`` takes about 10 minutes here.

    .venv/bin/python bench/bench_scale.py [--rows 1000000] [--rows-per-shard 100000] [--workers 2]
        [--recipes full basic ...] [--models b32] [--clusters K]

The 12.8M figures in README came from
    bench/bench_scale.py --rows 12800000 --models b32 --clusters 2000 --recipes full no_filter basic laion2b \
        clip_score_b32_threshold_0.25 clip_score_l14_30pct text_based
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bare import bare_basic, bare_score  # the same rules as plain scripts
from bench_score import TreeMemory  # the process-tree memory sampler

BASELINES = ("no_filter", "basic", "laion2b", "clip_score_b32_threshold_0.25", "clip_score_l14_30pct",
             "text_based", "image_based", "image_based_intersect_clip_score")
FULL = {"stages": {"basic": {}, "metaclip": {"t": 20000},
                   "score": {"score_column": "clip_l14_similarity_score", "fraction": 0.3},
                   "cluster": {"embeddings": "b32"}, "semdedup": {"embeddings": "b32"},
                   "dbp": {"embeddings": "b32", "keep_fraction": 0.5}},
        "select": "basic_keep AND metaclip_keep AND score_keep AND semdedup_keep AND dbp_keep"}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run(name: str, recipe, pool: Path, out: Path, workers: int) -> list[tuple]:
    """(recipe, stage, wall s, MiB written, peak RSS of the process tree while the stage ran) per stage,
    then the subset + report step, then the whole recipe; each stage's window ends when the pipeline's
    ``on_stage`` hook reports it complete."""
    from curate import pipeline

    memory, ends = TreeMemory(), []

    def stage_finished() -> None:
        ends.append((time.perf_counter(), memory.take()))

    started = time.perf_counter()
    out.mkdir(parents=True)
    pipeline.check_pool(pool, out)  # uids well formed and unique over the pool: cached for run_recipe
    stage_finished()
    report = pipeline.run_recipe(recipe, pool, out, workers=workers, on_stage=stage_finished)
    seconds, tail_peak = time.perf_counter() - started, memory.stop()
    (previous, check_peak), ends = ends[0], ends[1:]
    rows = [(name, "(pool check)", previous - started, 0, check_peak)]
    for stage, (end, peak) in zip(recipe.stage_names, ends):
        rows.append((name, stage, end - previous, size(out / stage), peak))
        previous = end
    rows.append((name, "subset+report", started + seconds - previous, size(out / "subset"), tail_peak))
    rows.append((name, "(recipe)", seconds, size(out), max([tail_peak, *(peak for _, peak in ends)]),
                 report["rows_out"]))
    shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recipes", nargs="*", default=[*BASELINES, "full"])
    parser.add_argument("--clusters", type=int, default=None, help="k of the full recipe's cluster stage (SemDeDup) "
                        "and of image_based; default rows / 1000")
    parser.add_argument("--models", default="b32,l14", help="embeddings the npz hold (DataComp: b32,l14; both "
                        "score columns are always written); b32 alone needs 40%% of the disk, and skips the recipes "
                        "that read l14 embeddings")
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    if "l14" not in models:
        skipped = [name for name in args.recipes if name.startswith("image_based")]
        args.recipes = [name for name in args.recipes if name not in skipped]
        print(f"--models {args.models}: skipping {skipped} (they read l14 embeddings)")
    need = args.rows * (2 * 2 * sum({"b32": 512, "l14": 768}[m] for m in models) + 700)  # npz + parquet, pool, runs
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if need > 0.9 * free:
        sys.exit(f"needs about {need / 2**30:.0f} GiB in {tempfile.gettempdir()}, {free / 2**30:.0f} GiB free: "
                 f"fewer --rows, --models b32, or TMPDIR elsewhere")

    import pyarrow.parquet as pq

    from curate.demo.synthetic import write_datacomp_pool
    from curate.recipe import load_recipe, parse_recipe
    from curate.steps.datacomp import import_datacomp

    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        started = time.perf_counter()
        source = write_datacomp_pool(work / "src", shards=-(-args.rows // args.rows_per_shard),
                                     rows_per_shard=args.rows_per_shard, seed=12, npz_models=models)
        npz_bytes = sum(p.stat().st_size for p in source.glob("*.npz"))
        print(f"pool: {args.rows:,} rows written in {time.perf_counter() - started:.0f} s; npz {npz_bytes / 2**30:.2f} GiB")
        started = time.perf_counter()
        import_datacomp(source, work / "pool", link_embeddings=True)
        print(f"import --link-embeddings: {time.perf_counter() - started:.1f} s, adds {size(work / 'pool') / 2**20:,.0f} MiB "
              f"({size(work / 'pool') / npz_bytes:.1%} of the npz)")
        if "l14" in models:
            with np.load(source / "00000000.npz") as arrays:
                np.save(work / "targets.npy", arrays["l14_img"][::100].astype(np.float32))
        clusters = args.clusters or max(10, args.rows // 1000)  # DataComp image_based: 100k for 12.8M (~128 rows each)
        started = time.perf_counter()
        scores = np.concatenate([pq.read_table(p, columns=["clip_l14_similarity_score"]).column(0).to_numpy()
                                 for p in sorted((work / "pool").glob("*.parquet"))])
        threshold = -np.sort(-scores)[int(len(scores) * 0.3)]
        print(f"bare kernel, top 30% by L/14 score (numpy sort): {time.perf_counter() - started:.2f} s, "
              f"keeps {(scores >= threshold).sum():,}")
        bare = {"score": bare_score(work / "pool", work / "bare_score", args.workers),
                "basic": bare_basic(work / "pool", work / "bare_basic", args.workers)}
        print("bare rules with their own I/O (bench/bare.py): " + ", ".join(f"{k} {v:.1f} s" for k, v in bare.items()))
        results = []
        for name in args.recipes:
            if name == "full":
                recipe = parse_recipe(FULL, "full", [f"cluster.clusters={clusters}"])
            else:
                overrides = [f"image_based.targets={work / 'targets.npy'}", f"image_based.clusters={clusters}"] \
                    if name.startswith("image_based") else []
                recipe = load_recipe(Path("jobs/recipes") / f"{name}.yaml", overrides)
            # a fresh interpreter per recipe: its peaks are its own, not what earlier recipes left in this one
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as isolated:
                results += isolated.submit(run, name, recipe, work / "pool", work / f"run_{name}", args.workers).result()
        print(f"{'recipe':<34}{'stage':<15}{'wall s':>9}{'x bare':>8}{'MiB written':>13}{'peak RSS MiB':>14}"
              f"{'rows out':>12}")
        for row in results:
            out_rows = f"{row[5]:>12,}" if len(row) > 5 else ""
            ratio = f"{row[2] / bare[row[1]]:>8.1f}" if row[1] in bare else " " * 8
            print(f"{row[0]:<34}{row[1]:<15}{row[2]:>9.1f}{ratio}{row[3] / 2**20:>13,.0f}{row[4] / 2**20:>14,.0f}"
                  f"{out_rows}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
