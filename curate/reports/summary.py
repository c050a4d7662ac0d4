"""The run report: OUT/report.json and a short human-readable summary.

Counts, from the stage outputs themselves (engine-agnostic): rows in; per stage the rows it
would remove (``<stage>_keep`` false or null) by ``<stage>_reason``, and how many of them no
other stage removes; download status counts when the pool has them; rows out.

When the pool carries a ground-truth file (the demo pool: ``_ground_truth.parquet`` with a
``defect`` column, "clean" or the planted defect), each stage gets precision (share of the
rows it removes that carry any planted defect), recall (share of the defects it targets,
per ``DEMO_TARGETS``, that it removes) and precision_vs_clean (of the removed rows that are
clean or targeted, the share targeted), computed over downloaded rows (status "success")
when the pool has a status column; and the subset gets, per defect, the share left in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from curate.pool import list_shards, shard_columns
from curate.runio import atomic_write_json
from curate.steps.subset import SUBSET

GROUND_TRUTH = "_ground_truth.parquet"
DOWNLOAD_TARGETS = ("unreachable_url", "timeout_url", "corrupt_image", "hash_mismatch")
DEMO_TARGETS = {
    "basic": ("small_image", "extreme_aspect", "non_english", "short_caption"),
    "laion2b": ("non_english",),
    "align": ("small_image", "extreme_aspect", "short_caption", "boilerplate_caption"),
    "score": ("mismatched_caption",),
}


def decisions(pool_dir: Path, out_dir: Path, stage_names: list[str]) -> pl.DataFrame:
    """One row per pool sample: uid, status (if any), each stage's keep/reason, selected."""
    shards = [str(p) for p in list_shards(pool_dir)]
    pool_columns = ["uid"] + (["status"] if "status" in shard_columns(Path(shards[0])) else [])
    frame = pl.scan_parquet(shards).select(pool_columns)
    for name in stage_names:
        columns = [c for c in (f"{name}_keep", f"{name}_reason") if c in pl.read_parquet_schema(_first_part(out_dir / name))]
        if columns:
            frame = frame.join(pl.scan_parquet(str(out_dir / name / "part-*.parquet")).select(["uid", *columns]),
                               on="uid", how="left")
    subset_parts = sorted((out_dir / SUBSET).glob("part-*.parquet"))
    selected = pl.scan_parquet([str(p) for p in subset_parts]).select("uid").unique().with_columns(selected=pl.lit(True))
    frame = frame.join(selected, on="uid", how="left").with_columns(pl.col("selected").fill_null(False))
    return frame.collect()


def _first_part(stage_dir: Path) -> Path:
    return next(iter(sorted(stage_dir.glob("part-*.parquet"))))


def build_report(pool_dir: Path, out_dir: Path, recipe: dict[str, Any], engine: str,
                 seconds: float | None = None) -> dict[str, Any]:
    stage_names = list(recipe["stages"])
    table = decisions(pool_dir, out_dir, stage_names)
    removed_any = [pl.col(f"{n}_keep").fill_null(False).not_() for n in stage_names if f"{n}_keep" in table.columns]
    report: dict[str, Any] = {
        "recipe": recipe, "engine": engine, "pool": str(pool_dir), "rows_in": table.height,
        "rows_out": int(table["selected"].sum()), "select": recipe["select"], "stages": {}, "seconds": seconds,
    }
    if "status" in table.columns:
        report["download_status"] = _value_counts(table, "status")
    for name in stage_names:
        keep = f"{name}_keep"
        if keep not in table.columns:
            continue
        removed = table.filter(pl.col(keep).fill_null(False).not_())
        others = [r for n, r in zip(stage_names, removed_any) if n != name and f"{n}_keep" in table.columns]
        only_here = removed.filter(~pl.any_horizontal(others)) if others else removed
        report["stages"][name] = {
            "removed": removed.height,
            "removed_only_by_this_stage": only_here.height,
            "by_reason": _value_counts(removed, f"{name}_reason") if f"{name}_reason" in removed.columns else {},
        }
    if "metaclip" in stage_names:  # concept frequencies: entry counts before/after balancing
        from curate.reports.concepts import metaclip_summary

        report["metaclip"] = metaclip_summary(out_dir, pool_dir)
    clusters_path = out_dir / "dbp" / "clusters.parquet"
    if "dbp" in stage_names and clusters_path.exists():  # per-cluster sizes before / after DBP
        clusters = pl.read_parquet(clusters_path, columns=["centroid_id", "size", "quota", "complexity"])
        report["dbp_clusters"] = clusters.rename({"centroid_id": "cluster", "quota": "kept"}).to_dicts()
    truth_path = pool_dir / GROUND_TRUTH
    if truth_path.exists():
        report["ground_truth"] = ground_truth_metrics(table, pl.read_parquet(truth_path), stage_names)
    atomic_write_json(report, out_dir / "report.json")
    return report


def _value_counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame.group_by(column).len().sort(column, nulls_last=True)
    return {str(value): int(n) for value, n in counts.iter_rows()}


def ground_truth_metrics(table: pl.DataFrame, truth: pl.DataFrame, stage_names: list[str]) -> dict[str, Any]:
    joined = table.join(truth.select("uid", "defect"), on="uid", how="left").with_columns(pl.col("defect").fill_null("clean"))
    downloaded = joined.filter(pl.col("status") == "success") if "status" in joined.columns else joined
    metrics: dict[str, Any] = {"stages": {}, "subset": {}}
    if "status" in joined.columns:
        failed = joined.filter(pl.col("status") != "success")
        targets = joined.filter(pl.col("defect").is_in(DOWNLOAD_TARGETS))
        metrics["download"] = {
            "targets": list(DOWNLOAD_TARGETS),
            "precision": _ratio(failed.filter(pl.col("defect").is_in(DOWNLOAD_TARGETS)).height, failed.height),
            "recall": _ratio(targets.filter(pl.col("status") != "success").height, targets.height),
        }
    for name in stage_names:
        keep = f"{name}_keep"
        if keep not in downloaded.columns:
            continue
        removed = downloaded.filter(pl.col(keep).fill_null(False).not_())
        targets = DEMO_TARGETS.get(name, ())
        target_rows = downloaded.filter(pl.col("defect").is_in(targets))
        hit = target_rows.filter(pl.col(keep).fill_null(False).not_()).height
        metrics["stages"][name] = {
            "targets": list(targets),
            "precision": _ratio(removed.filter(pl.col("defect") != "clean").height, removed.height),
            "recall": _ratio(hit, target_rows.height) if targets else None,
            # of the removed rows that are clean or targeted, the share targeted: the stage's
            # precision on the defect it is for, not counting defects other stages remove
            "precision_vs_clean": _ratio(hit, removed.filter(pl.col("defect").is_in([*targets, "clean"])).height)
            if targets else None,
            "removed_by_defect": _value_counts(removed, "defect"),
        }
    if "semdedup_keep" in downloaded.columns and "duplicate_of" in truth.columns:
        metrics["semdedup_pairs"] = duplicate_pair_metrics(downloaded, truth)
    for defect, group in joined.group_by("defect"):
        metrics["subset"][defect[0]] = {"rows": group.height, "left_in_subset": int(group["selected"].sum())}
    clean = metrics["subset"].get("clean", {"rows": 0, "left_in_subset": 0})
    metrics["clean_kept"] = _ratio(clean["left_in_subset"], clean["rows"])
    defective = joined.filter(pl.col("defect") != "clean")
    metrics["defects_removed"] = _ratio(defective.height - int(defective["selected"].sum()), defective.height)
    return metrics


def duplicate_pair_metrics(downloaded: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    """SemDeDup against the planted (copy, original) pairs: a pair is found when either member
    is removed (which one stays depends on the order within the cluster); precision is the
    share of removed rows that belong to a planted pair."""
    present = set(downloaded["uid"].to_list())
    pairs = truth.filter(pl.col("duplicate_of").is_not_null()).select("uid", "duplicate_of").rows()
    pairs = [(copy, original) for copy, original in pairs if copy in present and original in present]
    removed = set(downloaded.filter(pl.col("semdedup_keep").fill_null(False).not_())["uid"].to_list())
    members = {uid for pair in pairs for uid in pair}
    found = sum(1 for copy, original in pairs if copy in removed or original in removed)
    return {"pairs": len(pairs), "recall": _ratio(found, len(pairs)),
            "precision": _ratio(len(removed & members), len(removed)), "removed": len(removed)}


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def summary(report: dict[str, Any]) -> str:
    lines = [f"rows in: {report['rows_in']}"]
    if "download_status" in report:
        lines.append(f"  download status: {report['download_status']}")
    for name, info in report["stages"].items():
        reasons = ", ".join(f"{r}={n}" for r, n in info["by_reason"].items() if r != "None")
        lines.append(f"  {name}: would remove {info['removed']} ({info['removed_only_by_this_stage']} only here): {reasons}")
    if "metaclip" in report:
        from curate.reports.concepts import summary_lines

        lines.extend(summary_lines(report["metaclip"]))
    if report.get("dbp_clusters"):
        sizes = sorted(c["size"] for c in report["dbp_clusters"])
        kept = sorted(c["kept"] for c in report["dbp_clusters"])
        lines.append(f"  dbp: {len(sizes)} clusters, sizes min/median/max {sizes[0]}/{sizes[len(sizes) // 2]}/{sizes[-1]}"
                     f" -> kept {kept[0]}/{kept[len(kept) // 2]}/{kept[-1]}")
    lines.append(f"rows out: {report['rows_out']}  (select: {report['select']})")
    truth = report.get("ground_truth")
    if truth:
        if "download" in truth:
            info = truth["download"]
            lines.append(f"  ground truth download: precision {info['precision']}, recall {info['recall']} of {info['targets']}")
        for name, info in truth["stages"].items():
            if name == "semdedup" and "semdedup_pairs" in truth:
                continue  # its own line below: the planted duplicate pairs
            if not info["targets"]:  # no planted defect is this stage's own (metaclip, dbp)
                lines.append(f"  ground truth {name}: no planted defect is its target; "
                             f"{info['precision']} of the rows it removes carry one")
                continue
            versus = info.get("precision_vs_clean")
            lines.append(f"  ground truth {name}: precision {info['precision']}, recall {info['recall']} of {info['targets']}"
                         + (f"; vs clean rows: precision {versus}" if versus is not None else ""))
        if "semdedup_pairs" in truth:
            info = truth["semdedup_pairs"]
            lines.append(f"  ground truth semdedup: {info['pairs']} planted duplicate pairs, recall {info['recall']}, "
                         f"precision {info['precision']}")
        lines.append(f"  clean samples kept: {truth['clean_kept']}, planted defects removed: {truth['defects_removed']}")
    return "\n".join(lines)
