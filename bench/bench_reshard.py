"""Benchmark: `curate reshard` throughput, local engine and Spark local[2], on the demo pool scaled up.

The pool: --images demo images and captions (curate.demo.pool, clean samples), repeated with new
uids to --samples rows (10,000-row parquet shards); the subset selects every row. Baseline, measured
in the same run: a plain single-process loop that reads each pool shard and writes jpg/txt/json
members with Python's tarfile into shards of the same size. Prints samples/s, MB/s (tar bytes
written) and the ratio to the baseline for: local, local with --shuffle, Spark; checks that the
local and Spark shards are byte-identical.

    .venv/bin/python bench/bench_reshard.py [--samples 100000] [--images 2500] [--cores 2]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from spark_session import warm_session

from curate.demo.run import prepare_trusted
from curate.steps.reshard import ReshardConfig, reshard
from curate.uid import derive_uid, uid_pairs, write_datacomp_subset

POOL_SHARD_ROWS, SHARD_SIZE = 10_000, 10_000


def make_pool(work: Path, images: int, samples: int) -> Path:
    """Demo images and captions, repeated with new uids up to ``samples`` rows."""
    prepare_trusted(work / "source", work / "seed_pool", images, seed=11)
    seed_rows = pq.read_table(work / "seed_pool" / "00000.parquet")
    pool = work / "pool"
    pool.mkdir()
    for shard, start in enumerate(range(0, samples, POOL_SHARD_ROWS)):
        rows = np.arange(start, min(samples, start + POOL_SHARD_ROWS))
        table = seed_rows.take(pa.array(rows % seed_rows.num_rows))
        texts = table.column("text").to_pylist()
        uids = [derive_uid(f"bench://{row}", text) for row, text in zip(rows.tolist(), texts)]
        pq.write_table(table.set_column(0, "uid", pa.array(uids, pa.string())), pool / f"{shard:05d}.parquet")
    return pool


def spark_reshard(run: Path, out: Path, pool: Path, spark) -> dict:
    from curate.engines import open_session

    with open_session("spark", spark=spark) as session:
        return reshard(run, out, ReshardConfig(shard_size=SHARD_SIZE), pool=pool, session=session)


def baseline(pool: Path, out: Path) -> None:
    """A plain loop: read each pool shard, write tar members with tarfile, one process."""
    out.mkdir()
    index, archive = 0, None
    for path in sorted(pool.glob("*.parquet")):
        table = pq.read_table(path, columns=["uid", "text", "jpg"])
        for uid, text, image in zip(*(table.column(c).to_pylist() for c in ("uid", "text", "jpg"))):
            if index % SHARD_SIZE == 0:
                archive and archive.close()
                archive = tarfile.open(out / f"{index // SHARD_SIZE:08d}.tar", "w")
            key = f"{index:09d}"
            for suffix, data in (("jpg", image), ("txt", text.encode()), ("json", json.dumps({"key": key, "uid": uid}).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            index += 1
    archive and archive.close()


def tar_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.tar"))


def digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reshard-"))
    started = time.perf_counter()
    pool = make_pool(work, args.images, args.samples)
    print(f"pool: {args.samples} rows from {args.images} demo images in {time.perf_counter() - started:.0f}s")
    run = work / "run"
    run.mkdir()
    write_datacomp_subset(np.concatenate([uid_pairs(pq.read_table(p, columns=["uid"]).column("uid"))
                                          for p in sorted(pool.glob("*.parquet"))]), run / "subset.npy")
    spark, session = warm_session(args.cores)  # warmed up outside the timing
    print(f"Spark session: {session}", file=sys.stderr)
    runs = {
        "baseline_tarfile_loop_1_process": lambda out: baseline(pool, out),
        "local": lambda out: reshard(run, out, ReshardConfig(shard_size=SHARD_SIZE), pool=pool, workers=args.cores),
        "local_shuffle": lambda out: reshard(run, out, ReshardConfig(shard_size=SHARD_SIZE, shuffle=True), pool=pool,
                                             workers=args.cores),
        "spark": lambda out: spark_reshard(run, out, pool, spark),
    }
    report, base_rate = {"samples": args.samples, "cores": args.cores, "pool_bytes": sum(p.stat().st_size for p in pool.glob("*.parquet"))}, None
    for name, function in runs.items():
        out = work / name
        started = time.perf_counter()
        function(out)
        seconds = time.perf_counter() - started
        base_rate = base_rate or args.samples / seconds
        report[name] = {"seconds": round(seconds, 1), "samples_per_s": round(args.samples / seconds),
                        "MB_per_s": round(tar_bytes(out) / seconds / 1e6, 1),
                        "ratio_vs_baseline": round(args.samples / seconds / base_rate, 2)}
        print(name, report[name], flush=True)
    assert digest(work / "local") == digest(work / "spark"), "local and Spark shards differ"
    report["local_equals_spark"] = True
    print(json.dumps(report, indent=2))
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
