"""Benchmark: DataComp basic filtering on 1M synthetic rows, local engine vs Spark local[2].

Baseline, measured in the same run on the same rows: a straightforward per-row Python loop
of the same rule (fastText predict one caption at a time, as DataComp's reference does),
single process. Prints rows/s, rows/s per core, and ratios against that baseline, and checks
that all three give the same decisions. Target (issue 2): >= 30k rows/s per core.

    .venv/bin/python bench/bench_basic.py [--rows 1000000] [--shards 8]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from spark_session import warm_session

from curate import pipeline
from curate.demo.synthetic import write_datacomp_pool
from curate.recipe import parse_recipe


def reference_basic(texts, widths, heights) -> np.ndarray:
    """DataComp's basic rule, one row at a time (the baseline)."""
    import fasttext

    from curate.models.langid import fasttext_model_path

    model = fasttext.load_model(str(fasttext_model_path()))
    keep = np.zeros(len(texts), dtype=bool)
    for i, (text, w, h) in enumerate(zip(texts, widths, heights)):
        label = model.predict(text.replace("\n", " "), k=1)[0][0].replace("__label__", "")
        keep[i] = (label == "en" and len(text.split()) > 2 and len(text) > 5
                   and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3)
    return keep


def decisions(out: Path) -> np.ndarray:
    table = pq.read_table(sorted((out / "basic").glob("part-*.parquet"))).sort_by("uid")
    return table.column("basic_keep").to_numpy(zero_copy_only=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-basic-"))
    atexit.register(shutil.rmtree, work, True)  # GBs of scratch: gone when the run ends
    pool = write_datacomp_pool(work / "pool", shards=args.shards, rows_per_shard=args.rows // args.shards, models=())
    cfg = parse_recipe({"stages": {"basic": {}}, "select": "basic_keep"}, "bench").stages[0][1]
    results = {}

    table = pq.read_table(sorted(pool.glob("*.parquet"))).sort_by("uid")
    started = time.perf_counter()
    expected = reference_basic(table.column("text").to_pylist(), table.column("original_width").to_pylist(),
                               table.column("original_height").to_pylist())
    results["baseline_per_row_loop_1_core"] = time.perf_counter() - started

    started = time.perf_counter()
    pipeline.run_stage("basic", cfg, pool, work / "local", engine="local", workers=args.cores)
    results["local_engine"] = time.perf_counter() - started
    assert np.array_equal(decisions(work / "local"), expected), "local engine disagrees with the reference loop"

    spark, session = warm_session(args.cores)  # a recipe's later stage: the session is warm (printed apart)
    started = time.perf_counter()
    pipeline.run_stage("basic", cfg, pool, work / "spark", engine="spark", spark=spark)
    results["spark_local"] = time.perf_counter() - started
    assert np.array_equal(decisions(work / "spark"), expected), "Spark disagrees with the reference loop"

    baseline_rate = args.rows / results["baseline_per_row_loop_1_core"]
    report = {"rows": args.rows, "cores": args.cores, "kept": int(expected.sum())}
    for name, seconds in results.items():
        cores = 1 if name.startswith("baseline") else args.cores
        rate = args.rows / seconds
        report[name] = {"seconds": round(seconds, 2), "rows_per_s": round(rate), "rows_per_s_per_core": round(rate / cores),
                        "speedup_vs_baseline": round(rate / baseline_rate, 2)}
    report["spark_vs_local"] = round(results["spark_local"] / results["local_engine"], 2)
    report["spark_session"] = session
    print(json.dumps(report, indent=2))
    spark.stop()


if __name__ == "__main__":
    main()
