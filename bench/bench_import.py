"""Benchmark: import-datacomp with the embeddings copied into the pool vs linked in place
(--link-embeddings, curate.npzlinks), on a synthetic DataComp pool (B/32 + L/14 npz, float16).

Printed per mode: import wall time, bytes the import adds to the disk (the pool directory) as a
share of the npz bytes, and the wall time of a `score` stage computing the L/14 CLIP score from
the embeddings (2 workers), whose decisions must be identical in both modes.

    .venv/bin/python bench/bench_import.py [--shards 10] [--rows-per-shard 10000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from curate import pipeline
    from curate.demo.synthetic import write_datacomp_pool
    from curate.recipe import parse_recipe
    from curate.steps.datacomp import import_datacomp

    work = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        source = write_datacomp_pool(work / "src", shards=args.shards, rows_per_shard=args.rows_per_shard, seed=1)
        npz_bytes = sum(path.stat().st_size for path in source.glob("*.npz"))
        cfg = parse_recipe({"stages": {"score": {"embeddings": "l14", "score_column": None, "fraction": 0.3}},
                            "select": "score_keep"}, "bench").stages[0][1]
        results = {}
        for mode in ("copied", "linked"):
            started = time.perf_counter()
            import_datacomp(source, work / mode, link_embeddings=mode == "linked")
            imported = time.perf_counter() - started
            started = time.perf_counter()
            pipeline.run_stage("score", cfg, work / mode, work / f"{mode}_run", workers=args.workers)
            results[mode] = (imported, size(work / mode), time.perf_counter() - started)
        same = all(a.read_bytes() == b.read_bytes() for a, b in zip(sorted((work / "copied_run" / "score").glob("part-*")),
                                                                    sorted((work / "linked_run" / "score").glob("part-*"))))
        print(f"{args.shards * args.rows_per_shard:,} rows; npz {npz_bytes / 2**20:,.0f} MiB; identical score output: {same}")
        print(f"{'mode':<8}{'import s':>10}{'pool MiB':>10}{'of npz':>8}{'score s':>9}")
        for mode, (imported, pool_bytes, scored) in results.items():
            print(f"{mode:<8}{imported:>10.1f}{pool_bytes / 2**20:>10,.0f}{pool_bytes / npz_bytes:>8.1%}{scored:>9.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
