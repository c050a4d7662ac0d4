"""Benchmark: the HTML report (curate.reports.html) of a 1M-row run.

The run is written directly, not computed: a pool of N rows in parquet shards (uid, text,
status, a b32 score, and tiny JPEGs of ~0.7 KB, cycled from 64 distinct ones) and, row-aligned
with it, the outputs of basic, laion2b, align, metaclip (entry lists over a 384k-entry list),
score (score_clip and its fitted threshold), cluster (1,000 clusters of skewed sizes),
semdedup and dbp (with clusters.parquet), the subset and report.json (curate.report.build_report
on those files, as a run ends). Each variant runs in its own fresh process, so its peak resident
memory (VmHWM) is its own:

- baseline: scan every stage's keep/reason columns with polars and count rows per (stage, reason),
  the funnel's numbers alone;
- report_json: curate.report.build_report (what every run already does at its end);
- html: write_html_report, the whole page; and its sections timed one by one.

    .venv/bin/python bench/bench_report.py [--rows 1000000] [--shards 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STAGES = ["basic", "laion2b", "align", "metaclip", "score", "cluster", "semdedup", "dbp"]
SELECT = "status = 'success' AND basic_keep AND laion2b_keep AND align_keep AND metaclip_keep AND score_keep AND dbp_keep"
ENTRIES = 384_000
CLUSTERS = 1000


def reasons(rng: np.random.Generator, n: int, choices: dict[str | None, float]) -> tuple[pa.Array, pa.Array]:
    """keep and reason columns: reason None (kept) or another, with the given shares."""
    names = list(choices)
    picked = rng.choice(len(names), n, p=np.array(list(choices.values())) / sum(choices.values()))
    reason = pa.array(names, pa.string()).take(pa.array(picked))
    return pa.array(picked == names.index(None)), reason


def tiny_jpegs(count: int = 64) -> pa.Array:
    from PIL import Image

    images = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (index * 4, 255 - index * 4, (index * 37) % 256)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    return pa.array(images, pa.binary())


def write_shard(run: Path, pool: Path, index: int, n: int, jpegs: pa.Array) -> None:
    from curate.demo.synthetic import captions, random_hex
    from curate.runio import atomic_write_table

    rng = np.random.default_rng([7, index])
    uid = random_hex(rng, n, 16)
    score_b32 = rng.normal(0.26, 0.06, n).astype(np.float32)
    status = np.where(rng.random(n) < 0.97, "success", "failed_to_download")
    images = jpegs.take(pa.array(rng.integers(0, len(jpegs), n)))
    atomic_write_table(pa.table({"uid": uid, "text": captions(rng, n), "status": status,
                                 "clip_b32_similarity_score": score_b32, "jpg": images}), pool / f"{index:05d}.parquet")
    part = f"part-{index:05d}.parquet"
    shares = {"basic": {None: 0.7, "not_english": 0.15, "few_words": 0.05, "too_small": 0.05, "aspect_ratio": 0.05},
              "laion2b": {None: 0.5, "not_english": 0.2, "low_score": 0.3},
              "align": {None: 0.85, "shared_text": 0.05, "few_words": 0.1},
              "semdedup": {None: 0.9, "duplicate": 0.1}, "dbp": {None: 0.5, "pruned": 0.4, "semdedup": 0.1}}
    columns = {stage: dict(zip((f"{stage}_keep", f"{stage}_reason"), reasons(rng, n, choices)))
               for stage, choices in shares.items()}
    lengths = rng.integers(0, 4, n)
    entries = np.minimum(rng.zipf(1.3, int(lengths.sum())) - 1, ENTRIES - 1).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    meta_keep = (lengths > 0) & (rng.random(n) < 0.8)
    meta_reason = np.where(lengths == 0, "no_match", np.where(meta_keep, None, "not_sampled"))
    columns["metaclip"] = {"metaclip_entries": pa.ListArray.from_arrays(pa.array(offsets), pa.array(entries)),
                           "metaclip_keep": meta_keep, "metaclip_reason": meta_reason}
    score = rng.normal(0.22, 0.06, n).astype(np.float32)
    columns["score"] = {"score_clip": score, "score_keep": score >= 0.25,
                        "score_reason": np.where(score >= 0.25, None, "below_threshold")}
    cluster = np.minimum(rng.zipf(1.5, n) - 1, CLUSTERS - 1).astype(np.int32)
    columns["cluster"] = {"cluster_id": cluster, "cluster_sim": rng.random(n).astype(np.float32)}
    for stage, stage_columns in columns.items():
        atomic_write_table(pa.table({"uid": uid, **stage_columns}), run / stage / part)
    keep = pa.table(columns["basic"] | columns["laion2b"] | columns["align"] | columns["dbp"]
                    | {"metaclip_keep": meta_keep, "score_keep": score >= 0.25})
    keeps = [np.asarray(column) for column in keep.columns if pa.types.is_boolean(column.type)]
    selected = np.logical_and.reduce([*keeps, status == "success"])
    atomic_write_table(pa.table({"uid": uid.filter(pa.array(selected))}), run / "subset" / part)


def write_run(work: Path, rows: int, shards: int) -> Path:
    from curate.reports.summary import build_report
    from curate.runio import atomic_write_json, atomic_write_table, write_manifest

    run, pool, jpegs = work / "run", work / "pool", tiny_jpegs()
    per_shard = -(-rows // shards)
    for index in range(shards):
        write_shard(run, pool, index, min(per_shard, rows - index * per_shard), jpegs)
    for stage in [*STAGES, "subset"]:
        write_manifest(run / stage, stage=stage, status="complete", config={"t": 20_000} if stage == "metaclip" else {})
    entries = pa.table({"entry_id": pa.array(np.arange(ENTRIES), pa.int32()), "entry": [f"entry {i}" for i in range(ENTRIES)],
                        "count": np.zeros(ENTRIES, np.int64), "p": np.ones(ENTRIES)})
    atomic_write_table(entries, run / "metaclip" / "_artifact.parquet")
    atomic_write_table(pa.table({"threshold": pa.array([0.25], pa.float32())}), run / "score" / "_artifact.parquet")
    sizes = np.bincount(np.concatenate([pq.read_table(p, columns=["cluster_id"]).column("cluster_id").to_numpy()
                                        for p in sorted((run / "cluster").glob("part-*.parquet"))]), minlength=CLUSTERS)
    atomic_write_table(pa.table({"centroid_id": np.arange(CLUSTERS, dtype=np.int32), "size": sizes,
                                 "quota": sizes // 2, "complexity": np.ones(CLUSTERS)}), run / "dbp" / "clusters.parquet")
    stages = {name: {} for name in STAGES}
    stages["laion2b"] = {"score_column": "clip_b32_similarity_score", "min_score": 0.28}
    recipe = {"name": "bench", "stages": stages, "select": SELECT}
    atomic_write_json({"recipe": recipe, "pool": str(pool), "engine": "local"}, run / "_run.json")
    counts = np.zeros(ENTRIES, np.int64)  # the fitted counts: the texts matching each entry
    for path in sorted((run / "metaclip").glob("part-*.parquet")):
        counts += np.bincount(pq.read_table(path, columns=["metaclip_entries"]).column(0).combine_chunks().flatten()
                              .to_numpy(), minlength=ENTRIES)
    artifact = pq.read_table(run / "metaclip" / "_artifact.parquet")
    atomic_write_table(artifact.set_column(2, "count", pa.array(counts)), run / "metaclip" / "_artifact.parquet")
    build_report(pool, run, recipe, "local")
    return run


def peak_rss_mb() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def phase(name: str, run: Path) -> dict:
    """Child process: one variant; returns seconds and the peak resident memory."""
    import polars as pl

    from curate.reports import html as h
    from curate.reports.decisions import decisions
    from curate.reports.samples import samples_section
    from curate.reports.summary import build_report
    from curate.runio import read_json

    started, info = time.perf_counter(), {}
    if name == "baseline":
        for stage in STAGES:
            frame = pl.scan_parquet(str(run / stage / "part-*.parquet"))
            if f"{stage}_keep" in frame.collect_schema().names():
                frame.group_by(f"{stage}_reason").len().collect()
    elif name == "report_json":
        meta = read_json(run / "_run.json")
        build_report(Path(meta["pool"]), run, meta["recipe"], "local")
    elif name == "html":
        info["kb"] = h.write_html_report(run).stat().st_size // 1024
    elif name == "sections":
        report, pool = read_json(run / "report.json"), Path(read_json(run / "_run.json")["pool"])
        begin = time.perf_counter()
        table = decisions(pool, run, list(report["stages"]))
        info["decisions"] = round(time.perf_counter() - begin, 2)
        steps = [("funnel", lambda: h._funnel(report, table, list(report["stages"]))),
                  ("scores", lambda: h._scores(report, run, pool)), ("metaclip", lambda: h._metaclip(report, run)),
                  ("clusters", lambda: h._clusters(run)),
                  ("samples", lambda: samples_section(table, list(report["stages"]), run, pool))]
        for step, function in steps:
            begin = time.perf_counter()
            function()
            info[step] = round(time.perf_counter() - begin, 2)
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["peak_rss_mb"] = peak_rss_mb()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--keep", type=Path, default=None, help="write the run here and keep it")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.run)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        work = args.keep or Path(scratch)
        started = time.perf_counter()
        run = write_run(work, args.rows, args.shards)
        print(f"wrote a {args.rows:,}-row run in {time.perf_counter() - started:.1f}s: {run}", flush=True)
        results = {}
        for name in ("baseline", "report_json", "html", "sections"):
            child = subprocess.run([sys.executable, __file__, "--phase", name, "--run", str(run)],
                                   capture_output=True, text=True, check=True)
            results[name] = json.loads(child.stdout.strip().splitlines()[-1])
            print(name, results[name], flush=True)
        print(json.dumps({"rows": args.rows, **results,
                          "html_over_baseline": round(results["html"]["seconds"] / results["baseline"]["seconds"], 1),
                          "html_over_report_json": round(results["html"]["seconds"] / results["report_json"]["seconds"], 2)},
                         indent=1))


if __name__ == "__main__":
    main()
