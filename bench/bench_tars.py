"""Benchmark: pools whose images stay in webdataset tars (curate.tarindex) against parquet pools.

1. Reading images: the same --samples rows (demo images and captions repeated with new uids, 10,000-row
   shards) as a parquet pool (jpg column) and as a webdataset pool (tars beside the shards, indexed
   once); images/s reading every shard's jpg through ``read_shard``, with 1 and --cores processes.
   Baseline: the parquet pool in the same run.
2. Reshard of a --fraction uid-hashed subset from the webdataset pool (curate reshard, local engine,
   --cores workers) against DataComp's resharder logic on the same tars: every input tar streamed with
   tarfile, members grouped by key, a sample kept when its uid is in the subset, written with tarfile
   to new shards, one process per input tar (DataComp's resharder parallelises over input shards).
3. ``ingest --retry-failed`` of --failed-fraction transient failures (503 until the file exists) on
   a --samples-row ingest from the loopback server, against a full re-ingest of the same list.

    .venv/bin/python bench/bench_tars.py [--samples 100000] [--images 2500] [--cores 2] [--skip-retry]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bench_reshard import make_pool

from curate.demo.server import serve
from curate.pool import read_shard, scan_shards
from curate.steps import ingest_more
from curate.steps.ingest import POOL_SCHEMA, download_options, ingest
from curate.steps.pool_tars import index_pool, store_shard
from curate.steps.reshard import ReshardConfig, reshard
from curate.uid import uid_pairs, uid_uniform, write_datacomp_subset


def as_pool_shard(table: pa.Table) -> pa.Table:
    n = table.num_rows
    nulls = {name: pa.nulls(n, POOL_SCHEMA.field(name).type) for name in POOL_SCHEMA.names}
    return pa.table({**nulls, "uid": table.column("uid"), "text": table.column("text"), "jpg": table.column("jpg"),
                     "status": pa.array(["success"] * n)}, schema=POOL_SCHEMA)


def two_pools(work: Path, images: int, samples: int) -> tuple[Path, Path, float]:
    seed = make_pool(work / "seed", images, samples)
    parquet, webdataset = work / "parquet", work / "webdataset"
    parquet.mkdir()
    webdataset.mkdir()
    for shard in sorted(seed.glob("*.parquet")):
        table = as_pool_shard(pq.read_table(shard))
        store_shard(table, parquet / shard.name, "parquet")
        store_shard(table, webdataset / shard.name, "webdataset")
    shutil.rmtree(work / "seed")
    started = time.perf_counter()
    index_pool(webdataset)
    return parquet, webdataset, time.perf_counter() - started


def read_images(path: Path) -> int:
    return sum(len(b) for b in read_shard(path, ["uid", "jpg"]).column("jpg").to_pylist() if b)


def read_rate(pool: Path, processes: int, samples: int) -> dict:
    shards = [s.path for s in scan_shards(pool)]
    started = time.perf_counter()
    if processes == 1:
        total = sum(map(read_images, shards))
    else:
        with Pool(processes) as workers:
            total = sum(workers.map(read_images, shards))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "images_per_s": round(samples / seconds), "MB_per_s": round(total / seconds / 1e6)}


def datacomp_like_shard(task: tuple[Path, set[str], Path]) -> int:
    """DataComp's resharder logic for one input tar: stream it, keep the samples whose uid is selected."""
    tar, selected, out = task
    written, sample, key = 0, {}, None
    with tarfile.open(tar) as source, tarfile.open(out, "w") as target:
        for info in source:
            this = info.name.split(".", 1)[0]
            if this != key and sample:
                written += flush(sample, key, selected, target)
                sample = {}
            key = this
            sample[info.name.split(".", 1)[1]] = source.extractfile(info).read()
        written += flush(sample, key, selected, target) if sample else 0
    return written


def flush(sample: dict, key: str, selected: set[str], target: tarfile.TarFile) -> int:
    if json.loads(sample["json"])["uid"] not in selected:
        return 0
    for extension, data in sample.items():
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size = len(data)
        target.addfile(info, io.BytesIO(data))
    return 1


def reshard_rates(webdataset: Path, work: Path, fraction: float, cores: int) -> dict:
    uids = pa.concat_arrays([read_shard(s.path, ["uid"]).column("uid").combine_chunks() for s in scan_shards(webdataset)])
    chosen = uids.filter(pa.array(uid_uniform(uids, 0, "bench") < fraction))
    (work / "run").mkdir()
    write_datacomp_subset(uid_pairs(chosen), work / "run" / "subset.npy")
    started = time.perf_counter()
    manifest = reshard(work / "run", work / "curate-shards", ReshardConfig(), pool=webdataset, workers=cores)
    ours = time.perf_counter() - started
    (work / "datacomp-shards").mkdir()
    selected = set(chosen.to_pylist())
    tasks = [(tar, selected, work / "datacomp-shards" / tar.name) for tar in sorted(webdataset.glob("*.tar"))]
    started = time.perf_counter()
    with Pool(cores) as workers:
        theirs_written = sum(workers.map(datacomp_like_shard, tasks))
    theirs = time.perf_counter() - started
    assert theirs_written == manifest["successes"] == len(chosen)
    return {"selected": len(chosen), "curate_seconds": round(ours, 1), "curate_samples_per_s": round(len(chosen) / ours),
            "datacomp_logic_seconds": round(theirs, 1), "datacomp_logic_samples_per_s": round(len(chosen) / theirs),
            "ratio_curate_vs_datacomp_logic": round(theirs / ours, 2)}


def retry_rates(work: Path, images: int, samples: int, failed_fraction: float, cores: int) -> dict:
    site = work / "site"
    source = work / "seed" / "source" / "images"
    make_pool(work / "seed", images, 1)  # writes the demo images
    shutil.copytree(source, site)
    names = sorted(p.name for p in site.iterdir())
    flaky = uid_uniform([f"{i:032x}" for i in range(samples)], 0, "flaky") < failed_fraction
    options = {"processes": cores, "threads": 32, "timeout": 5.0}
    with serve(site) as base:
        urls = [f"{base}/flaky/later/{names[i % len(names)]}?n={i}" if flaky[i] else f"{base}/{names[i % len(names)]}?n={i}"
                for i in range(samples)]
        pq.write_table(pa.table({"url": urls, "caption": [f"sample {i}" for i in range(samples)]}), work / "urls.parquet")
        started = time.perf_counter()
        ingest(work / "urls.parquet", work / "pool", **options)
        first = time.perf_counter() - started
        shutil.copytree(site, site / "later", ignore=shutil.ignore_patterns("later"))
        started = time.perf_counter()
        info = ingest_more.retry_failed(work / "pool", download_options(cores, 32, timeout=5.0))
        retry = time.perf_counter() - started
        started = time.perf_counter()
        ingest(work / "urls.parquet", work / "again", **options)
        again = time.perf_counter() - started
    assert info["status_counts"].get("success") == samples, info["status_counts"]
    return {"rows": samples, "failed_rows": int(flaky.sum()), "first_ingest_seconds": round(first, 1),
            "retry_seconds": round(retry, 1), "full_reingest_seconds": round(again, 1),
            "ratio_full_reingest_vs_retry": round(again / retry, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.3, help="subset share for the reshard comparison")
    parser.add_argument("--failed-fraction", type=float, default=0.05)
    parser.add_argument("--skip-retry", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tars-"))
    try:
        parquet, webdataset, index_seconds = two_pools(work, args.images, args.samples)
        report = {"samples": args.samples, "index_seconds": round(index_seconds, 2),
                  "tar_bytes": sum(p.stat().st_size for p in webdataset.glob("*.tar")),
                  "index_bytes": sum(p.stat().st_size for p in (webdataset / "images").iterdir())}
        for processes in sorted({1, args.cores}):
            base, tars = read_rate(parquet, processes, args.samples), read_rate(webdataset, processes, args.samples)
            report[f"read_{processes}_process"] = {"parquet": base, "tars": tars,
                                                   "ratio_tars_vs_parquet": round(base["seconds"] / tars["seconds"], 2)}
            print(f"read, {processes} process(es):", report[f"read_{processes}_process"], flush=True)
        report["reshard"] = reshard_rates(webdataset, work, args.fraction, args.cores)
        print("reshard:", report["reshard"], flush=True)
        shutil.rmtree(parquet)
        if not args.skip_retry:
            report["retry"] = retry_rates(work / "retry", args.images, args.samples, args.failed_fraction, args.cores)
            print("retry:", report["retry"], flush=True)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
