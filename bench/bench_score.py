"""Benchmark: the exact global CLIP-score fraction (DESIGN.md 4.1) on 10M synthetic float32 scores.

The pool: N rows (uid + a float32 score column) in several parquet shards. Each variant runs in
its own fresh process, so its peak memory is its own; memory is the peak resident set of the
whole process tree (the variant, its worker processes, and for Spark the JVM and its Python
workers), sampled from /proc every 50 ms. (Not ru_maxrss: a child's keeps the parent's resident
size at fork, and Spark's JVM is never waited for.)

- baseline: what DataComp's ``get_threshold`` does, in one process: load every score, full
  numpy sort, ``-np.sort(-scores)[int(N * f)]``, then ``scores >= threshold``;
- local: the score stage on the local engine (2 fit passes of 16-bit histograms + apply);
- spark: the same stage on Spark local[CORES], in a session started and warmed up before the timing
  (bench/spark_session.py; both printed apart);
- local_threshold: the stage with a fixed threshold instead (its fit passes return at once):
  the same reads, apply and writes, so local - local_threshold is what exactness costs;
- with --scaling, baseline and local again on N / 5 rows in shards of the same size: the
  baseline's memory grows with N, the local engine's is bounded by a shard.

Every variant must find the same threshold and keep the same number of rows; local and Spark
must select the same uids.

    .venv/bin/python bench/bench_score.py [--rows 10000000] [--shards 10] [--fraction 0.3] [--scaling]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCORE = "clip_l14_similarity_score"


def write_pool(directory: Path, rows: int, shards: int, seed: int = 0) -> Path:
    from curate.demo.synthetic import random_hex

    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    for index in range(shards):
        n = min(per_shard, rows - index * per_shard)
        rng = np.random.default_rng([seed, index])
        scores = np.round(rng.normal(0.22, 0.06, n), 4).astype(np.float32)  # rounded: realistic ties
        pq.write_table(pa.table({"uid": random_hex(rng, n, 16), SCORE: scores}), directory / f"{index:05d}.parquet")
    return directory


class TreeMemory:
    """Peak resident memory of this process and all its descendants, sampled from /proc."""

    def __init__(self, interval: float = 0.05):
        self.peak, self.interval, self.running = 0, interval, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while self.running:
            self.peak = max(self.peak, sum(_rss_pages(pid) for pid in _tree(os.getpid())) * page)
            time.sleep(self.interval)

    def take(self) -> int:
        """The peak since the last take (or the start), and start a new window."""
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _rss_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0


def run_variant(variant: str, pool: Path, out: Path, fraction: float, cores: int) -> dict:
    """Inside the fresh process: run one variant, return seconds, threshold, kept, memory."""
    memory = TreeMemory()
    started, spark, session = time.perf_counter(), None, {}
    if variant == "spark":  # started and warmed up outside the timing (bench/spark_session.py), said apart
        from spark_session import warm_session

        spark, session = warm_session(cores)
        started = time.perf_counter()
    if variant == "baseline":
        scores = np.concatenate([pq.read_table(p, columns=[SCORE]).column(SCORE).to_numpy()
                                 for p in sorted(pool.glob("*.parquet"))])
        threshold = -np.sort(-scores)[int(len(scores) * fraction)]
        kept = int((scores >= threshold).sum())
    else:
        from curate import pipeline
        from curate.recipe import parse_recipe

        rule = {"fraction": None, "threshold": 0.25} if variant == "local_threshold" else {"fraction": fraction}
        cfg = parse_recipe({"stages": {"score": {"score_column": SCORE, **rule}}, "select": "score_keep"},
                           "bench").stages[0][1]
        engine = "spark" if variant == "spark" else "local"
        manifest = pipeline.run_stage("score", cfg, pool, out, engine=engine, workers=cores, spark=spark)
        artifact = pq.read_table(out / "score" / "_artifact.parquet").to_pylist()[0]
        threshold, kept = artifact["threshold"], artifact["selected"]
        assert manifest["rows"] == sum(pq.ParquetFile(p).metadata.num_rows for p in pool.glob("*.parquet"))
    seconds = time.perf_counter() - started
    if spark is not None:
        spark.stop()
    return {"seconds": round(seconds, 2), "threshold": float(threshold), "kept": kept,
            "peak_tree_rss_mib": round(memory.stop() / 2**20, 1), **session}


def spawn(variant: str, pool: Path, out: Path, fraction: float, cores: int) -> dict:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run([sys.executable, __file__, "--variant", variant, "--pool", str(pool), "--out", str(out),
                             "--fraction", str(fraction), "--cores", str(cores)],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def selected_uids(out: Path) -> np.ndarray:
    table = pq.read_table(sorted((out / "score").glob("part-*.parquet")), columns=["uid", "score_keep"])
    return np.sort(table.filter(table.column("score_keep")).column("uid").to_numpy(zero_copy_only=False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--scaling", action="store_true", help="also run the local engine on N / 5 rows")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.pool, args.out, args.fraction, args.cores)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    atexit.register(shutil.rmtree, work, True)  # GBs of scratch: gone when the run ends
    started = time.perf_counter()
    pool = write_pool(work / "pool", args.rows, args.shards)
    print(f"pool: {args.rows} rows in {args.shards} shards, written in {time.perf_counter() - started:.1f}s",
          file=sys.stderr)
    results = {name: spawn(name, pool, work / name, args.fraction, args.cores)
               for name in ("baseline", "local", "local_threshold", "spark")}
    if args.scaling:  # a fifth of the pool in a fifth of the shards: same shard size, N / 5
        small = write_pool(work / "pool-small", args.rows // 5, max(1, args.shards // 5))
        for name in ("baseline", "local"):
            results[f"{name}_n_over_5"] = spawn(name, small, work / f"{name}-small", args.fraction, args.cores)
    base = results["baseline"]
    for name in ("local", "spark"):
        assert (results[name]["threshold"], results[name]["kept"]) == (base["threshold"], base["kept"]), name
    assert np.array_equal(selected_uids(work / "local"), selected_uids(work / "spark")), "local and Spark differ"
    for name, result in results.items():
        if name == "local_threshold":  # another rule: its threshold and count are not comparable
            del result["threshold"], result["kept"]
        result["time_vs_baseline"] = round(result["seconds"] / base["seconds"], 2)
        result["time_vs_local"] = round(result["seconds"] / results["local"]["seconds"], 2)
        result["tree_memory_vs_baseline"] = round(result["peak_tree_rss_mib"] / base["peak_tree_rss_mib"], 2)
    print(json.dumps({"rows": args.rows, "shards": args.shards, "fraction": args.fraction, "cores": args.cores,
                      "threshold": base["threshold"], "kept": base["kept"], "results": results}, indent=2))


if __name__ == "__main__":
    main()
