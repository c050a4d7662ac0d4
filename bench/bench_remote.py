"""Benchmark: a DataComp pool on an S3-compatible server curated into a run on the same server
(curate/remote.py: a local mirror pulled before and pushed after), against the same commands on local
paths, and the mirror's transfers against a plain pyarrow copy of the same bytes.

The server is moto's, in-process on 127.0.0.1 (objects held in memory), so the figures measure
curate's own overhead (listing, index, per-file requests) over loopback, not a real network: on a
real bucket the transfer lines scale with its bandwidth. Printed: wall time of each step, bytes moved.

    .venv/bin/python bench/bench_remote.py [--shards 10] [--rows-per-shard 10000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path


def size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def timed(label: str, results: list, function, *args) -> object:
    started = time.perf_counter()
    value = function(*args)
    results.append((label, time.perf_counter() - started))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import boto3
    from pyarrow import fs

    from curate.cli import main as curate
    from curate.demo.synthetic import write_datacomp_pool

    boto3.client("s3").create_bucket(Bucket="bench")
    s3, _ = fs.FileSystem.from_uri("s3://bench/x")
    work = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    os.environ["CURATE_CACHE_DIR"] = str(work / "cache")
    results: list[tuple[str, float]] = []
    workers = ["--workers", str(args.workers)]
    recipe = "jobs/recipes/clip_score_l14_30pct.yaml"
    try:
        source = write_datacomp_pool(work / "src", shards=args.shards, rows_per_shard=args.rows_per_shard, seed=1)
        timed("upload the DataComp files (pyarrow copy_files, baseline)", results, fs.copy_files, str(source),
              "bench/datacomp", fs.LocalFileSystem(), s3)
        timed("local: import-datacomp", results, curate, ["import-datacomp", "--src", str(source), "--out",
                                                         str(work / "pool")])
        timed("local: run clip_score_l14_30pct", results, curate, ["run", recipe, "--pool", str(work / "pool"),
                                                                   "--out", str(work / "run"), *workers])
        timed("s3: import-datacomp (pull src, import, push pool)", results, curate,
              ["import-datacomp", "--src", "s3://bench/datacomp", "--out", "s3://bench/pool"])
        timed("s3: run (pull pool, run, push run)", results, curate,
              ["run", recipe, "--pool", "s3://bench/pool", "--out", "s3://bench/run", *workers])
        timed("s3: the same run again, same machine (nothing to fetch or redo)", results, curate,
              ["run", recipe, "--pool", "s3://bench/pool", "--out", "s3://bench/run", *workers])
        shutil.rmtree(work / "cache")
        timed("s3: the same run again, another machine (pull all, redo nothing)", results, curate,
              ["run", recipe, "--pool", "s3://bench/pool", "--out", "s3://bench/run", *workers])
        identical = (work / "run" / "subset.npy").read_bytes() == s3.open_input_stream("bench/run/subset.npy").read()
        print(f"pool: {args.shards * args.rows_per_shard:,} rows, DataComp files {size(source) / 2**20:.0f} MiB, "
              f"imported pool {size(work / 'pool') / 2**20:.0f} MiB; subset.npy identical: {identical}")
        for label, seconds in results:
            print(f"{label:<70} {seconds:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    main()
