"""MetaCLIP's concept-frequency report (Xu et al. 2023, "Demystifying CLIP Data", figure 2;
cf. Udandarao et al. 2024, "No Zero-Shot Without Exponential Data"), DESIGN.md 4.2.

From a run directory whose metaclip stage is complete (file names start with "_" so that
Spark, which reads a stage directory whole, skips them):

- OUT/metaclip/_entry_counts.parquet: per entry (entry_id, entry, count_pool, count_balanced,
  count_subset, p): texts matching it in the pool (the fitted counts), among the texts the
  balancing keeps (``metaclip_keep``), and in the final subset (OUT/subset, when selected;
  null before that);
- OUT/metaclip/_entry_counts.png: the head/tail plot, entries by pool rank on log-log axes,
  before and after balancing, with the line at t;
- a summary (report.json's "metaclip"): the top entries, how many entries reach t, and the
  tail mass (the share of entry matches on entries with count_pool < t) before and after;
- with a concept list (e.g. ImageNet class names, one per line or a JSON list), how many
  pool texts and subset texts match each concept under the same rule.

    curate metaclip-report OUT [--pool POOL] [--concepts FILE]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.kernels.metaclip_match import Matcher
from curate.resources import load_metadata
from curate.runio import atomic_write_json, atomic_write_table, read_json, read_manifest

log = logging.getLogger(__name__)

HEAD = 20


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


def _add(counts: np.ndarray, lists: pa.Array) -> None:
    ids = lists.flatten().to_numpy()
    if ids.size:
        counts += np.bincount(ids, minlength=len(counts))[:len(counts)]


def _bincount(paths: list[Path], size: int) -> np.ndarray:
    """Entry counts over the ``metaclip_entries`` of these parquet files."""
    counts = np.zeros(size, dtype=np.int64)
    for path in paths:
        _add(counts, pq.read_table(path, columns=["metaclip_entries"]).column("metaclip_entries").combine_chunks())
    return counts


def balanced_counts(out_dir: Path, size: int) -> np.ndarray:
    """Entry counts among the texts MetaCLIP keeps: the matches (metaclip_match) of the rows with
    ``metaclip_keep``. Row-aligned parts (local engine) are read pair by pair; otherwise joined by uid."""
    counts = np.zeros(size, dtype=np.int64)
    matches, decisions = _parts(out_dir / "metaclip_match"), _parts(out_dir / "metaclip")
    aligned = all((read_manifest(out_dir / name) or {}).get("layout") == "pool-shards" for name in ("metaclip_match", "metaclip"))
    if aligned and len(matches) == len(decisions):
        for match_path, keep_path in zip(matches, decisions):
            keep = pq.read_table(keep_path, columns=["metaclip_keep"]).column("metaclip_keep").combine_chunks()
            lists = pq.read_table(match_path, columns=["metaclip_entries"]).column("metaclip_entries").combine_chunks()
            _add(counts, lists.filter(keep.fill_null(False)))
        return counts
    kept = pl.scan_parquet([str(p) for p in decisions]).filter(pl.col("metaclip_keep")).select("uid")
    joined = pl.scan_parquet([str(p) for p in matches]).join(kept, on="uid").select("metaclip_entries").collect()
    _add(counts, joined.to_arrow().column("metaclip_entries").combine_chunks())
    return counts


def entry_counts(out_dir: Path) -> pa.Table:
    """Per entry: counts in the pool, after balancing, and in the subset (null without one)."""
    artifact = pq.read_table(out_dir / "metaclip" / "_artifact.parquet")
    size = artifact.num_rows
    balanced = balanced_counts(out_dir, size)
    subset_parts = _parts(out_dir / "subset")
    has_subset = bool(subset_parts) and "metaclip_entries" in pq.read_schema(subset_parts[0]).names
    subset = pa.array(_bincount(subset_parts, size)) if has_subset else pa.nulls(size, pa.int64())
    return pa.table({"entry_id": artifact.column("entry_id"), "entry": artifact.column("entry"),
                     "count_pool": artifact.column("count"), "count_balanced": balanced,
                     "count_subset": subset, "p": artifact.column("p")})


def summarize(table: pa.Table, t: int) -> dict[str, Any]:
    pool = table.column("count_pool").to_numpy()
    balanced = table.column("count_balanced").to_numpy()
    order = np.argsort(-pool, kind="stable")[:HEAD]
    tail = pool < t
    head_rows = table.take(order).select(["entry", "count_pool", "count_balanced", "count_subset", "p"])
    return {
        "t": t, "entries": len(pool), "entries_matched": int((pool > 0).sum()),
        "entries_reaching_t": int((pool >= t).sum()), "entries_over_t_after_balancing": int((balanced > t).sum()),
        "matches_pool": int(pool.sum()), "matches_balanced": int(balanced.sum()),
        "tail_mass_pool": _share(pool[tail].sum(), pool.sum()),
        "tail_mass_balanced": _share(balanced[tail].sum(), balanced.sum()),
        "head": head_rows.to_pylist(),
    }


def _share(part: float, whole: float) -> float | None:
    return round(float(part) / float(whole), 4) if whole else None


def plot(table: pa.Table, t: int, path: Path) -> bool:
    """The head/tail plot as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path.name)
        return False
    pool = table.column("count_pool").to_numpy()
    order = np.argsort(-pool, kind="stable")[: int((pool > 0).sum())]
    rank = np.arange(1, len(order) + 1)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.loglog(rank, pool[order], label="pool (before balancing)", lw=1.5)
    axes.loglog(rank, np.maximum(table.column("count_balanced").to_numpy()[order], 0.8), ".", ms=2,
                label="after balancing (metaclip_keep)")
    axes.axhline(t, color="k", ls="--", lw=1, label=f"t = {t:,}")
    axes.set_xlabel("entry rank by pool count")
    axes.set_ylabel("texts matching the entry")
    axes.set_title("MetaCLIP entry counts before and after balancing")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _texts(paths: list[Path]):
    for path in paths:
        yield pq.read_table(path, columns=["text"]).column("text")


def concept_counts(concepts: list[str], pool_dir: Path | None, out_dir: Path) -> list[dict[str, Any]]:
    """Texts matching each concept (MetaCLIP's rule) in the pool and in the subset."""
    matcher = Matcher(concepts)
    result = {}
    for name, paths in (("pool", _parts_or_shards(pool_dir)), ("subset", _parts(out_dir / "subset"))):
        counts = np.zeros(len(concepts), dtype=np.int64)
        for text in _texts(paths):
            ids = matcher.match(text).flatten().to_numpy()
            counts += np.bincount(ids, minlength=len(concepts)) if ids.size else 0
        result[name] = counts if paths else None
    return [{"concept": concept, "count_pool": None if result["pool"] is None else int(result["pool"][i]),
             "count_subset": None if result["subset"] is None else int(result["subset"][i])}
            for i, concept in enumerate(concepts)]


def _parts_or_shards(pool_dir: Path | None) -> list[Path]:
    return sorted(pool_dir.glob("*.parquet")) if pool_dir else []


def metaclip_summary(out_dir: Path, pool_dir: Path | None = None, concepts_path: Path | None = None) -> dict[str, Any]:
    """Write _entry_counts.parquet and .png under OUT/metaclip; return the report.json summary."""
    out_dir = Path(out_dir)
    artifact = pq.read_table(out_dir / "metaclip" / "_artifact.parquet", columns=["t"]) if "t" in pq.read_schema(
        out_dir / "metaclip" / "_artifact.parquet").names else None
    t = int(artifact.column("t")[0].as_py()) if artifact is not None and artifact.num_rows else int(
        read_manifest(out_dir / "metaclip")["config"]["t"] or 1)
    table = entry_counts(out_dir)
    atomic_write_table(table, out_dir / "metaclip" / "_entry_counts.parquet")
    summary = summarize(table, t)
    summary["plot"] = str(out_dir / "metaclip" / "_entry_counts.png") if plot(
        table, t, out_dir / "metaclip" / "_entry_counts.png") else None
    if concepts_path:
        concepts = load_metadata(concepts_path)
        counts = concept_counts(concepts, pool_dir, out_dir)
        summary["concepts"] = {"file": str(concepts_path), "counts": counts,
                               "absent_from_subset": sum(1 for c in counts if c["count_subset"] == 0)}
    return summary


def summary_lines(info: dict[str, Any]) -> list[str]:
    top = ", ".join(f"{row['entry']!r} {row['count_pool']}->{row['count_balanced']}" for row in info["head"][:5])
    return [f"  metaclip: t={info['t']}, {info['entries_reaching_t']} of {info['entries']} entries reach t; "
            f"tail mass {info['tail_mass_pool']} -> {info['tail_mass_balanced']}; head: {top}"]


def run_report(run_dir: Path, pool: Path | None = None, concepts: Path | None = None) -> int:
    """`curate metaclip-report`: write the report files, update OUT/report.json, print a summary."""
    run_file = run_dir / "_run.json"
    pool = pool or (Path(read_json(run_file)["pool"]) if run_file.exists() else None)
    info = metaclip_summary(run_dir, pool, concepts)
    report_path = run_dir / "report.json"
    report = read_json(report_path) if report_path.exists() else {}
    report["metaclip"] = info
    atomic_write_json(report, report_path)
    print("\n".join(summary_lines(info)))
    if "concepts" in info:
        print(json.dumps(info["concepts"]["counts"][:HEAD], indent=1))
    return 0

