"""The run report: OUT/report.json and the short summary a run prints.

From the stage outputs themselves (engine-agnostic, curate.reports.decisions): rows in; per stage
the rows it removes (``<stage>_keep`` false or null) by ``<stage>_reason``, each counted once under
the stage that owns it, and how many of them no other stage removes; the funnel of the recipe's
``select`` (rows left after each of its AND terms, in order); download status counts when the
pool has them; rows out; the safeguard warnings (a stage removing more than
``max_removed_share`` of the pool, a select that keeps nothing); MetaCLIP's concept frequencies
and DBP's clusters when the recipe has them; and, when the pool carries a ground-truth file, the
metrics of curate.reports.truth. report.json is written once, at the end of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from curate.reports.decisions import MAX_REMOVED_SHARE, decisions, funnel, removals, safeguards, value_counts
from curate.reports.truth import GROUND_TRUTH, load_truth, truth_metrics
from curate.runio import atomic_write_json, read_manifest

__all__ = ["GROUND_TRUTH", "build_report", "summary"]


def build_report(pool_dir: Path, out_dir: Path, recipe: dict[str, Any], engine: str,
                 seconds: float | None = None) -> dict[str, Any]:
    stage_names = list(recipe["stages"])
    table = decisions(pool_dir, out_dir, stage_names, recipe["select"])
    report: dict[str, Any] = {
        "recipe": recipe, "engine": engine, "pool": str(pool_dir), "rows_in": table.height,
        "rows_out": int(table["selected"].sum()), "select": recipe["select"], "seconds": seconds,
        "stages": removals(table, stage_names), "funnel": funnel(table, recipe["select"]),
    }
    if "status" in table.columns:
        report["download_status"] = value_counts(table, "status")
    report["warnings"] = safeguards(report, recipe.get("max_removed_share", MAX_REMOVED_SHARE))
    report["frozen"] = frozen_stages(out_dir, stage_names)
    if "metaclip" in stage_names:  # concept frequencies: entry counts before/after balancing
        from curate.reports.concepts import metaclip_summary

        report["metaclip"] = metaclip_summary(out_dir, pool_dir)
    if "metaclip_worldwide" in stage_names:  # MetaCLIP 2: per-language counts, t and captions kept
        from curate.reports.languages import language_summary

        report["metaclip_worldwide"] = language_summary(out_dir)
    clusters_path = out_dir / "dbp" / "clusters.parquet"
    if "dbp" in stage_names and clusters_path.exists():  # per-cluster sizes before / after DBP
        clusters = pl.read_parquet(clusters_path, columns=["centroid_id", "size", "quota", "complexity"])
        if report["frozen"] and "dbp" in report["frozen"]["stages"]:  # sizes and quotas are the earlier pool's
            clusters = dbp_kept(out_dir, clusters)
        report["dbp_clusters"] = clusters.rename({"centroid_id": "cluster", "quota": "kept"}).to_dicts()
    truth = load_truth(pool_dir, recipe.get("ground_truth_targets"))
    if truth is not None:
        report["ground_truth"] = truth_metrics(table, *truth, stage_names)
    atomic_write_json(report, out_dir / "report.json")
    return report


def dbp_kept(out_dir: Path, clusters: pl.DataFrame) -> pl.DataFrame:
    """A frozen DBP's per-cluster rows and rows kept in this pool (its cut-offs keep a share, not a quota)."""
    rows = pl.scan_parquet(sorted((out_dir / "dbp").glob("part-*.parquet"))).filter(pl.col("dbp_reason").ne_missing("semdedup"))
    counted = (rows.filter(pl.col("dbp_cluster_id").is_not_null()).group_by("dbp_cluster_id")
               .agg(pl.len().cast(pl.Int64).alias("size"), pl.col("dbp_keep").sum().cast(pl.Int64).alias("quota"))
               .rename({"dbp_cluster_id": "centroid_id"}).collect())
    counted = counted.with_columns(pl.col("centroid_id").cast(clusters.schema["centroid_id"]))
    return (clusters.drop("size", "quota").join(counted, on="centroid_id", how="left")
            .with_columns(pl.col("size", "quota").fill_null(0)).select("centroid_id", "size", "quota", "complexity"))


def frozen_stages(out_dir: Path, stage_names: list[str]) -> dict[str, Any] | None:
    """For a run made with --frozen: the earlier run, and the stages whose fit came from it."""
    fits = {name: (read_manifest(out_dir / name) or {}).get("fit") or {} for name in stage_names}
    frozen = {name: fit["from"] for name, fit in fits.items() if fit.get("mode") == "frozen"}
    if not frozen:
        return None
    return {"from": str(Path(next(iter(frozen.values()))).parent), "stages": sorted(frozen),
            "refitted": sorted(name for name, fit in fits.items() if fit.get("mode") == "fitted")}


def summary(report: dict[str, Any]) -> str:
    lines = [f"rows in: {report['rows_in']}"]
    if "download_status" in report:
        lines.append(f"  download status: {report['download_status']}")
    for name, info in report["stages"].items():
        reasons = ", ".join(f"{r}={n}" for r, n in info["by_reason"].items() if r != "None")
        lines.append(f"  {name}: removes {info['removed']} ({info['removed_only_by_this_stage']} only here): {reasons}")
    lines.extend(_extras(report))
    steps = report.get("funnel") or []
    if len(steps) > 2:
        lines.append("  funnel (select, term by term): " + " -> ".join(str(step["rows_left"]) for step in steps))
    lines.append(f"rows out: {report['rows_out']}  (select: {report['select']})")
    lines.extend(f"WARNING: {warning['message']}" for warning in report.get("warnings", []))
    if report.get("ground_truth"):
        lines.extend(_truth_lines(report["ground_truth"]))
    return "\n".join(lines)


def _extras(report: dict[str, Any]) -> list[str]:
    lines = []
    if "metaclip" in report:
        from curate.reports.concepts import summary_lines

        lines.extend(summary_lines(report["metaclip"]))
    if "metaclip_worldwide" in report:
        from curate.reports.languages import summary_lines as language_lines

        lines.extend(language_lines(report["metaclip_worldwide"]))
    if report.get("dbp_clusters"):
        sizes = sorted(c["size"] for c in report["dbp_clusters"])
        kept = sorted(c["kept"] for c in report["dbp_clusters"])
        lines.append(f"  dbp: {len(sizes)} clusters, sizes min/median/max {sizes[0]}/{sizes[len(sizes) // 2]}/{sizes[-1]}"
                     f" -> kept {kept[0]}/{kept[len(kept) // 2]}/{kept[-1]}")
    return lines


def _truth_lines(truth: dict[str, Any]) -> list[str]:
    lines = []
    if "download" in truth:
        info = truth["download"]
        lines.append(f"  ground truth download: precision {info['precision']}, recall {info['recall']} of {info['targets']}")
    for name, info in truth["stages"].items():
        if name == "semdedup" and "semdedup_pairs" in truth:
            continue  # its own line below: the planted duplicate pairs
        if not info["targets"]:  # no known defect is this stage's own (metaclip, dbp)
            lines.append(f"  ground truth {name}: no known defect is its target; "
                         f"{info['precision']} of the rows it removes carry one")
            continue
        versus = info.get("precision_vs_clean")
        lines.append(f"  ground truth {name}: precision {info['precision']}, recall {info['recall']} of {info['targets']}"
                     + (f"; vs clean rows: precision {versus}" if versus is not None else ""))
    if "semdedup_pairs" in truth:
        info = truth["semdedup_pairs"]
        lines.append(f"  ground truth semdedup: {info['pairs']} planted duplicate pairs, recall {info['recall']}, "
                     f"precision {info['precision']}")
    lines.append(f"  clean samples kept: {truth['clean_kept']}, known defects removed: {truth['defects_removed']}")
    return lines
