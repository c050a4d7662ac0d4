"""Benchmark: cluster -> semdedup -> dbp on synthetic clustered 512-d embeddings (float16 store)
with planted near-duplicates, on the local engine and on Spark local[2].

Each (engine, stage) runs in its own subprocess, so the peak RSS printed is that phase's own
(the process and all its children: local workers, Spark's JVM and Python workers); the fit and
apply times are the manifest's fit_seconds and seconds_last_run.

Baselines in the same run, on about 100k rows of whole clusters (as our cluster stage assigned
them): a straightforward dense numpy implementation of DESIGN.md 4.3 per cluster (the full
n x n similarity matrix, upper triangle, column max) and a per-row loop; the keep-sets must
equal ours (curate.semdedup.apply), and the times (from the float16 column to the keep-set)
are printed side by side.

    .venv/bin/python bench/bench_dedup.py [--rows 1000000] [--clusters 1000] [--engines local spark]
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIM = 512


def write_pool(pool: Path, rows: int, shards: int, centres: int, duplicate_fraction: float, seed: int = 0) -> None:
    """Unit rows around ``centres`` random directions; a share of rows are near-copies
    (noise 0.02 per coordinate scale, cosine ~0.99) of other rows of the same shard."""
    from curate.kernels.embeddings import encode

    sidecar = pool / "embeddings" / "b32"
    sidecar.mkdir(parents=True, exist_ok=True)
    per_shard = rows // shards
    for index in range(shards):
        rng = np.random.default_rng([seed, index])
        directions = np.random.default_rng(seed).normal(size=(centres, DIM)).astype(np.float32)
        vectors = directions[rng.integers(0, centres, per_shard)] + 1.2 * rng.normal(size=(per_shard, DIM)).astype(np.float32)
        copies = rng.random(per_shard) < duplicate_fraction
        sources = rng.integers(0, per_shard, copies.sum())
        vectors[copies] = vectors[sources] + 0.02 * rng.normal(size=(copies.sum(), DIM)).astype(np.float32) * \
            np.linalg.norm(vectors[sources], axis=1, keepdims=True) / np.sqrt(DIM)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        uids = pa.array([f"{index:08x}{row:08x}{int(v):016x}" for row, v in
                         enumerate(rng.integers(0, 2**63, per_shard, dtype=np.int64))])
        source_uid = np.full(per_shard, None, dtype=object)
        source_uid[copies] = np.asarray(uids.to_pylist(), dtype=object)[sources]
        pq.write_table(pa.table({"uid": uids, "planted": copies, "planted_source": pa.array(source_uid, pa.string())}),
                       pool / f"{index:05d}.parquet")
        pq.write_table(pa.table({"uid": uids, "image_emb": encode(vectors), "text_emb": encode(vectors)}),
                       sidecar / f"part-{index:05d}.parquet")
    (sidecar / "_manifest.json").write_text(json.dumps({"model": "synthetic", "layout": "pool-shards",
                                                        "fingerprint": f"bench-{rows}-{seed}"}))


def run_phase(engine: str, stage: str, pool: Path, out: Path, values: dict) -> dict:
    """Child process: one stage on one engine; prints its timings and peak RSS as JSON."""
    from curate import pipeline
    from curate.recipe import parse_recipe

    cfg = parse_recipe({"stages": {stage: values}, "select": "true"}, "bench").stages[0][1]
    spark = None
    if engine == "spark":
        from spark_session import warm_session

        spark, session = warm_session(2, app="bench-dedup")  # warmed up outside the timing, printed apart
    started = time.perf_counter()
    manifest = pipeline.run_stage(stage, cfg, pool, out, engine=engine, workers=2, spark=spark)
    seconds = time.perf_counter() - started
    if spark is not None:
        spark.stop()
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"seconds": round(seconds, 1), "fit_seconds": manifest.get("fit_seconds"),
            "apply_seconds": manifest.get("seconds_last_run"), "peak_rss_gb": round(peak / 2**20, 2),
            **({} if spark is None else session)}


def dense_reference(vectors: np.ndarray, eps: float) -> np.ndarray:
    """Members in dedup order -> keep, by the full similarity matrix (straightforward)."""
    sims = vectors @ vectors.T
    upper = np.triu(sims, k=1)
    np.fill_diagonal(upper, -np.inf)
    upper[np.tril_indices(len(vectors), k=-1)] = -np.inf
    return ~(upper.max(axis=0, initial=-np.inf) > np.float32(1 - eps))


def loop_reference(vectors: np.ndarray, eps: float) -> np.ndarray:
    return np.array([j == 0 or not ((vectors[:j] @ vectors[j]) > np.float32(1 - eps)).any() for j in range(len(vectors))])


def subset_comparison(pool: Path, out: Path, rows: int, eps: float) -> dict:
    """Whole clusters (ascending id) until ``rows`` rows, so clusters keep their real sizes.
    Each side is timed per cluster from the stored float16 column to the keep-set: ours is
    ``semdedup.apply`` on the cluster's rows (after a warm-up call on 1,000 rows: first-call
    costs are not the method's); the references decode and normalise the cluster's rows in
    dedup order, then apply the rule."""
    from curate.kernels.vectors import unit_vectors
    from curate.stages import semdedup

    clusters = pq.read_table(sorted((out / "cluster").glob("part-*.parquet")))
    emb = pq.read_table(sorted((pool / "embeddings" / "b32").glob("part-*.parquet")), columns=["image_emb"])
    table = clusters.append_column("image_emb", emb.column("image_emb"))
    all_ids = table.column("cluster_id").to_numpy(zero_copy_only=False)
    sizes = np.bincount(all_ids[all_ids >= 0].astype(np.int64))
    last = int(np.searchsorted(np.cumsum(sizes), rows))  # clusters 0..last hold >= rows rows
    table = table.filter(pa.array(np.isin(all_ids, np.arange(last + 1))))
    rows = table.num_rows
    cfg = semdedup.SemDedupConfig(eps=eps)
    semdedup.apply(table.slice(0, 1000), cfg)
    timings, ids = {"ours": 0.0, "dense": 0.0, "loop": 0.0}, table.column("cluster_id").to_numpy(zero_copy_only=False)
    keep = {name: np.zeros(rows, bool) for name in timings}
    for cluster in np.unique(ids):  # one cluster per call, as the stage's group path calls apply
        where = np.flatnonzero(ids == cluster)
        members = table.take(where)
        started = time.perf_counter()
        keep["ours"][where] = semdedup.apply(members, cfg).column("semdedup_keep").to_numpy(zero_copy_only=False)
        timings["ours"] += time.perf_counter() - started
        order = semdedup.dedup_order(members, cfg)
        positions = where[order]
        for name, function in (("dense", dense_reference), ("loop", loop_reference)):
            started = time.perf_counter()
            vectors, _ = unit_vectors([members.take(order).column("image_emb")])
            keep[name][positions] = function(vectors, eps)
            timings[name] += time.perf_counter() - started
    ours, ours_seconds = keep["ours"], timings["ours"]
    return {"rows": rows, "clusters": last + 1, "ours_seconds": round(ours_seconds, 2), "dense_seconds": round(timings["dense"], 2),
            "loop_seconds": round(timings["loop"], 2), "identical_to_dense": bool((ours == keep["dense"]).all()),
            "identical_to_loop": bool((ours == keep["loop"]).all()), "kept": int(ours.sum())}


def planted_metrics(pool: Path, out: Path) -> dict:
    """A planted pair (copy, source) is found if either was removed (the one nearer the centroid goes)."""
    planted = pq.read_table(sorted(pool.glob("*.parquet")), columns=["uid", "planted", "planted_source"]).sort_by("uid")
    decided = pq.read_table(sorted((out / "semdedup").glob("part-*.parquet"))).sort_by("uid")
    removed = ~decided.column("semdedup_keep").to_numpy(zero_copy_only=False)
    removed_uids = set(np.asarray(decided.column("uid").to_pylist(), dtype=object)[removed])
    pairs = [(u, s) for u, s, p in zip(*(planted.column(c).to_pylist() for c in ("uid", "planted_source", "planted"))) if p]
    found = sum(u in removed_uids or s in removed_uids for u, s in pairs)
    return {"removed": int(removed.sum()), "planted_pairs": len(pairs), "kept_fraction": round(1 - removed.mean(), 4),
            "planted_pairs_found": round(found / max(len(pairs), 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--dbp-clusters", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--eps", type=float, default=0.07)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--engines", nargs="+", default=["local", "spark"])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--phase", nargs=4, default=None, help=argparse.SUPPRESS)  # engine stage pool out (child)
    parser.add_argument("--values", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        engine, stage, pool, out = args.phase
        print(json.dumps(run_phase(engine, stage, Path(pool), Path(out), json.loads(args.values))))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    if args.work is None:  # GBs of scratch: gone when the run ends (--work DIR keeps it)
        atexit.register(shutil.rmtree, work, True)
    pool = work / "pool"
    if not pool.exists():
        started = time.perf_counter()
        write_pool(pool, args.rows, args.shards, centres=args.clusters // 4, duplicate_fraction=0.1)
        print(f"pool: {args.rows} rows x {DIM}-d float16 in {time.perf_counter() - started:.0f}s ({work})", flush=True)
    stages = {"cluster": {"clusters": args.clusters, "iterations": args.iterations},
              "semdedup": {"eps": args.eps},
              "dbp": {"keep_fraction": 0.5, "clusters": args.dbp_clusters, "iterations": args.iterations}}
    results = {}
    for engine in args.engines:
        for stage, values in stages.items():
            child = subprocess.run([sys.executable, __file__, "--phase", engine, stage, str(pool), str(work / engine),
                                    "--values", json.dumps(values)], capture_output=True, text=True)
            if child.returncode:
                raise SystemExit(f"{engine} {stage} failed:\n{child.stderr[-3000:]}")
            results[f"{engine}/{stage}"] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{engine:6s} {stage:9s} {results[f'{engine}/{stage}']}", flush=True)
    first = work / args.engines[0]
    results["planted"] = planted_metrics(pool, first)
    print("semdedup vs planted:", results["planted"], flush=True)
    if len(args.engines) > 1:
        same = all(pq.read_table(sorted((work / e / s).glob("part-*.parquet"))).sort_by("uid").equals(
            pq.read_table(sorted((first / s).glob("part-*.parquet"))).sort_by("uid"))
            for e in args.engines[1:] for s in ("cluster", "semdedup", "dbp"))
        results["engines_identical"] = same
        print("local == spark for cluster, semdedup, dbp:", same, flush=True)
    results["subset"] = subset_comparison(pool, first, min(args.subset, args.rows), args.eps)
    print("100k subset, ours vs straightforward:", results["subset"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
