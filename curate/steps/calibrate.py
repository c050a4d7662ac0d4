"""`curate calibrate`: how a threshold acts on this pool, before choosing it (issue 11).

- ``semdedup``: on whole clusters of a run's ``cluster`` stage (up to ``max_rows`` rows, clusters
  picked by a hash of their id), SemDeDup's rule for every eps of a grid: the share of rows kept
  (a member is kept at eps iff its largest cosine to an earlier member in dedup order is <= 1 - eps,
  curate.kernels.dedup), beside the paper's LAION-440M figures (eps 0.03 -> 72%, 0.07 -> 63%,
  0.124 -> 50%), and the same for ``relative_eps``; the median nearest-neighbour distance.
- ``score``: the share of the pool kept at each threshold of a grid and the threshold of each
  fraction (DataComp's rule: the value at descending index int(N * f)), from a score column of the
  run (``score_clip``) or of the pool.

Both print a table and write RUN_DIR/_calibrate_<what>.json.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate import npzlinks
from curate.errors import RecipeError
from curate.kernels.dedup import neighbour_similarities, relative_eps
from curate.kernels.embeddings import vector_names
from curate.kernels.vectors import unit_vectors
from curate.pool import scan_shards
from curate.runio import atomic_write_json, read_json, read_manifest

EPS_GRID = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.03, 0.07, 0.124)
RELATIVE_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)
PAPER = {0.03: 0.72, 0.07: 0.63, 0.124: 0.50}  # SemDeDup, LAION-440M, CLIP ViT-B/32 (Abbas et al. 2023)


def pool_of(run_dir: Path, pool: Path | None) -> Path:
    if pool is not None:
        return Path(pool)
    if not (run_dir / "_run.json").is_file():
        raise RecipeError(f"{run_dir}: no _run.json naming the pool; pass --pool")
    return Path(read_json(run_dir / "_run.json")["pool"])


def cluster_sample(run_dir: Path, pool: Path, max_rows: int) -> tuple[pl.DataFrame, list[str]]:
    """uid, cluster_id, cluster_sim and the embedding columns of whole clusters, up to max_rows."""
    manifest = read_manifest(run_dir / "cluster")
    if not manifest or manifest.get("status") != "complete":
        raise RecipeError(f"{run_dir}: no complete cluster stage; run `curate cluster` first")
    clusters = pl.scan_parquet(str(run_dir / "cluster" / "part-*.parquet")).select("uid", "cluster_id", "cluster_sim")
    sizes = clusters.drop_nulls("cluster_id").group_by("cluster_id").len().collect().sort("cluster_id")
    order = np.argsort([zlib.crc32(int(c).to_bytes(4, "little")) for c in sizes["cluster_id"]], kind="stable")
    chosen = sizes[order].filter(pl.col("len").cum_sum() <= max(max_rows, int(sizes["len"].min() or 0)))
    embeddings, modality = manifest["config"]["embeddings"], manifest["config"]["modality"]
    names = vector_names(embeddings, modality)
    source = run_dir / "embed" if embeddings == "embed" else pool / "embeddings" / embeddings
    if npzlinks.links(source):  # embeddings read in place from DataComp's npz files
        vectors = pl.concat([pl.from_arrow(npzlinks.read_part(source, part, ["uid", *names]))
                             for part in npzlinks.part_names(source)]).lazy()
    else:
        vectors = pl.scan_parquet(str(source / "part-*.parquet")).select("uid", *names)
    rows = clusters.filter(pl.col("cluster_id").is_in(chosen["cluster_id"].to_list())).join(vectors, on="uid")
    return rows.collect(), names


def semdedup_curve(run_dir: Path, pool: Path | None = None, max_rows: int = 200_000) -> dict[str, Any]:
    table, names = cluster_sample(run_dir, pool_of(run_dir, pool), max_rows)
    table = table.sort("cluster_id", "cluster_sim", "uid")  # dedup order: farthest first, ties by uid
    arrow = table.to_arrow()
    vectors, _ = unit_vectors([arrow.column(n) for n in names])
    clusters = table["cluster_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    earlier, nearest, per_cluster = [], [], []
    for start, stop in zip(starts, np.r_[starts[1:], len(clusters)]):
        e, n = neighbour_similarities(vectors[start:stop])
        earlier.append(e)
        nearest.append(n)
        per_cluster.append((e, n))
    earlier, nearest = np.concatenate(earlier), np.concatenate(nearest)
    rows = len(earlier)
    curve = [{"eps": eps, "kept": round(float((earlier <= np.float32(1 - eps)).mean()), 4),
              "paper_laion440m_b32": PAPER.get(eps)} for eps in EPS_GRID]
    relative = [{"relative_eps": r, "kept": round(sum(int((e <= np.float32(1 - relative_eps(n, r))).sum())
                                                      for e, n in per_cluster) / rows, 4)} for r in RELATIVE_GRID]
    finite = nearest[np.isfinite(nearest)]
    result = {"rows": rows, "clusters": len(starts), "embeddings": names,
              "median_nearest_neighbour_distance": round(float(np.median(1 - finite)), 6) if finite.size else None,
              "eps": curve, "relative_eps": relative}
    atomic_write_json(result, run_dir / "_calibrate_semdedup.json")
    return result


def score_curve(run_dir: Path, pool: Path | None = None, column: str = "score_clip") -> dict[str, Any]:
    source = run_dir / "score" if (run_dir / "score" / "_manifest.json").exists() and column == "score_clip" else None
    files = [str(p) for p in sorted(source.glob("part-*.parquet"))] if source else [
        str(s.path) for s in scan_shards(pool_of(run_dir, pool))]
    values = pl.scan_parquet(files).select(pl.col(column).cast(pl.Float64)).collect()[column].to_numpy()
    total = len(values)
    scored = np.sort(values[~np.isnan(values)])[::-1]
    fractions = [0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9]
    by_fraction = [{"fraction": f, "threshold": float(scored[int(total * f)]) if int(total * f) < len(scored) else None}
                   for f in fractions]
    grid = np.quantile(scored, np.linspace(0.05, 0.95, 10)) if len(scored) else []
    by_threshold = [{"threshold": round(float(t), 4), "kept": round(float((scored >= t).sum() / total), 4)} for t in grid]
    result = {"rows": total, "scored": len(scored), "column": column, "by_fraction": by_fraction,
              "by_threshold": by_threshold}
    atomic_write_json(result, run_dir / "_calibrate_score.json")
    return result


def table_lines(result: dict[str, Any]) -> list[str]:
    if "eps" in result:
        lines = [f"{result['rows']} rows in {result['clusters']} clusters; median nearest-neighbour cosine distance "
                 f"{result['median_nearest_neighbour_distance']}", "eps        kept   (paper, LAION-440M B/32)"]
        lines += [f"{row['eps']:<10} {row['kept']:<6} {row['paper_laion440m_b32'] or ''}" for row in result["eps"]]
        lines += ["relative_eps  kept"] + [f"{row['relative_eps']:<13} {row['kept']}" for row in result["relative_eps"]]
        return lines
    lines = [f"{result['scored']} of {result['rows']} rows have a {result['column']}", "fraction  threshold"]
    lines += [f"{row['fraction']:<9} {row['threshold']}" for row in result["by_fraction"]]
    lines += ["threshold  kept"] + [f"{row['threshold']:<10} {row['kept']}" for row in result["by_threshold"]]
    return lines
