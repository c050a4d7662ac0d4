"""Scoring a run against known defects: the ground-truth file and its metrics.

Format: ``POOL/_ground_truth.parquet`` (beside the pool's shards; its leading "_" keeps it out of
the shard list), one row per sample that has a known label:

- ``uid`` (string, required): the sample;
- ``defect`` (string, required): "clean", or the name of the defect planted in (or found in) it;
- ``duplicate_of`` (string, optional): for a copy, the uid of the sample it copies: pairs score
  SemDeDup (``semdedup_pairs``).

Which defects each stage is meant to remove (its *targets*) are declared, not built in: in the
file's parquet metadata under the key ``curate.targets``, a JSON object ``{"<stage>": [defect, ...],
"download": [...]}``, or in the recipe (top-level ``ground_truth_targets``, same shape, which wins).
Samples missing from the file count as "clean". Metrics are over downloaded rows (status
"success") when the pool has a status column:

- per stage: ``precision`` (share of the rows it removes that carry any defect), ``recall``
  (share of its target rows it removes), ``precision_vs_clean`` (of removed rows that are clean
  or targeted, the share targeted) and ``removed_by_defect``;
- ``download``: how well the download status separates the download targets;
- ``subset``: per defect, rows and rows left in the subset; ``clean_kept``, ``defects_removed``.
  A copy (a row with ``duplicate_of``) counts as left only while its original is selected too:
  one of the two leaving the subset removes the duplication, whichever SemDeDup keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curate.errors import PoolError
from curate.reports.decisions import removed_mask, value_counts

GROUND_TRUTH = "_ground_truth.parquet"
TARGETS_KEY = b"curate.targets"


def load_truth(pool_dir: Path, recipe_targets: dict[str, list[str]] | None = None) -> tuple[pl.DataFrame, dict] | None:
    """The ground truth and the targets per stage, or None when the pool has no ground-truth file."""
    path = Path(pool_dir) / GROUND_TRUTH
    if not path.is_file():
        return None
    table = pq.read_table(path)
    missing = [c for c in ("uid", "defect") if c not in table.column_names]
    if missing:
        raise PoolError(f"{path}: a ground-truth file needs columns uid and defect; missing {missing}")
    metadata = table.schema.metadata or {}
    targets = json.loads(metadata[TARGETS_KEY]) if TARGETS_KEY in metadata else {}
    targets.update(recipe_targets or {})
    return pl.from_arrow(table), targets


def truth_metrics(table: pl.DataFrame, truth: pl.DataFrame, targets: dict[str, list[str]],
                  stage_names: list[str]) -> dict[str, Any]:
    joined = table.join(truth.select("uid", "defect"), on="uid", how="left").with_columns(pl.col("defect").fill_null("clean"))
    joined = with_duplication_left(joined, truth)
    downloaded = joined.filter(pl.col("status") == "success") if "status" in joined.columns else joined
    metrics: dict[str, Any] = {"targets": targets, "stages": {}, "subset": {}}
    if "status" in joined.columns and targets.get("download"):
        failed = joined.filter(pl.col("status") != "success")
        aimed = joined.filter(pl.col("defect").is_in(targets["download"]))
        metrics["download"] = {"targets": targets["download"],
                               "precision": _ratio(failed.filter(pl.col("defect").is_in(targets["download"])).height,
                                                   failed.height),
                               "recall": _ratio(aimed.filter(pl.col("status") != "success").height, aimed.height)}
    names = [n for n in stage_names if f"{n}_keep" in downloaded.columns]
    for name in names:
        metrics["stages"][name] = stage_metrics(downloaded, name, names, targets.get(name, []))
    if "semdedup_keep" in downloaded.columns and "duplicate_of" in truth.columns:
        metrics["semdedup_pairs"] = duplicate_pair_metrics(downloaded, truth)
    for defect, group in joined.group_by("defect"):
        metrics["subset"][defect[0]] = {"rows": group.height, "left_in_subset": int(group["left"].sum())}
    metrics["subset"] = dict(sorted(metrics["subset"].items()))
    clean = metrics["subset"].get("clean", {"rows": 0, "left_in_subset": 0})
    metrics["clean_kept"] = _ratio(clean["left_in_subset"], clean["rows"])
    defective = joined.filter(pl.col("defect") != "clean")
    metrics["defects_removed"] = _ratio(defective.height - int(defective["left"].sum()), defective.height)
    return metrics


def with_duplication_left(joined: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """``left``: the row is in the subset, and for a copy its original is too."""
    if "duplicate_of" not in truth.columns:
        return joined.with_columns(left=pl.col("selected"))
    originals = joined.select(pl.col("uid").alias("duplicate_of"), pl.col("selected").alias("original_selected"))
    copies = truth.select("uid", "duplicate_of").filter(pl.col("duplicate_of").is_not_null())
    joined = joined.join(copies, on="uid", how="left").join(originals, on="duplicate_of", how="left")
    left = pl.col("selected") & (pl.col("duplicate_of").is_null() | pl.col("original_selected").fill_null(False))
    return joined.with_columns(left=left).drop("duplicate_of", "original_selected")


def stage_metrics(downloaded: pl.DataFrame, name: str, names: list[str], targets: list[str]) -> dict[str, Any]:
    mask = removed_mask(downloaded, name, names)
    removed = downloaded.filter(mask)
    target_rows = downloaded.filter(pl.col("defect").is_in(targets))
    hit = target_rows.filter(removed_mask(target_rows, name, names)).height
    return {"targets": list(targets),
            "precision": _ratio(removed.filter(pl.col("defect") != "clean").height, removed.height),
            "recall": _ratio(hit, target_rows.height) if targets else None,
            # of the removed rows that are clean or targeted, the share targeted: the stage's precision on
            # the defect it is for, not counting defects other stages remove
            "precision_vs_clean": _ratio(hit, removed.filter(pl.col("defect").is_in([*targets, "clean"])).height)
            if targets else None,
            "removed_by_defect": value_counts(removed, "defect")}


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
