"""What every report is computed from: one row per pool sample with each stage's decision.

- ``decisions``: uid, the pool's ``status`` (when it has one), each stage's ``<stage>_keep`` and
  ``<stage>_reason``, every column the recipe's ``select`` names, and ``selected``;
- ``removals``: per stage, the rows it removes by reason, each removal counted once, under the
  stage that owns it: a reason that names another stage of the recipe (DBP's ``semdedup``: rows
  SemDeDup removed) belongs to that stage, not to this one;
- ``funnel``: the rows left after each conjunct of ``select`` in select order (so the funnel
  ends at the selected rows), with the conjunct's own removals;
- ``safeguards``: stages that remove more than ``max_removed_share`` of the pool, with their top
  reasons, and a select that keeps nothing (naming the stage that removed most).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.pool import list_shards, shard_columns
from curate.runio import read_manifest
from curate.selection import evaluate, parse_select
from curate.steps.subset import SUBSET

MAX_REMOVED_SHARE = 0.9  # a stage removing more than this share of the pool is called out


def decisions(pool_dir: Path, out_dir: Path, stage_names: list[str], select: str | None = None) -> pl.DataFrame:
    shards = list_shards(pool_dir)
    pool_names = shard_columns(shards[0])
    wanted = set(parse_select(select).columns()) if select else set()
    pool_columns = ["uid", *[c for c in pool_names if c == "status" or (c in wanted and c != "uid")]]
    stage_columns = {}
    for name in stage_names:
        parts = sorted((out_dir / name).glob("part-*.parquet"))
        if parts:
            names = pl.read_parquet_schema(parts[0])
            columns = [c for c in names if c in (f"{name}_keep", f"{name}_reason") or (c in wanted and c not in pool_columns)]
            if columns:
                stage_columns[name] = (parts, columns)
    if all(_row_aligned(out_dir / name, len(shards)) for name in [*stage_columns, SUBSET]):
        return pl.concat([_shard_decisions(shard, index, out_dir, pool_columns, stage_columns)
                          for index, shard in enumerate(shards)], how="vertical_relaxed")
    frame = pl.scan_parquet([str(p) for p in shards]).select(pool_columns)
    for parts, columns in stage_columns.values():
        frame = frame.join(pl.scan_parquet([str(p) for p in parts]).select(["uid", *columns]), on="uid", how="left")
    subset_parts = sorted((out_dir / SUBSET).glob("part-*.parquet"))
    selected = pl.scan_parquet([str(p) for p in subset_parts]).select("uid").unique().with_columns(selected=pl.lit(True))
    return frame.join(selected, on="uid", how="left").with_columns(pl.col("selected").fill_null(False)).collect()


def _row_aligned(stage_dir: Path, shards: int) -> bool:
    """Written by the local engine: part-NNNNN holds pool shard NNNNN's rows in order (Spark's parts do not)."""
    manifest = read_manifest(stage_dir)
    return manifest is not None and manifest.get("layout") == "pool-shards" and manifest.get("status") == "complete" \
        and all((stage_dir / f"part-{index:05d}.parquet").is_file() for index in range(shards))


def _shard_decisions(shard: Path, index: int, out_dir: Path, pool_columns: list[str],
                     stage_columns: dict[str, tuple[list[Path], list[str]]]) -> pl.DataFrame:
    """One shard's decisions from row-aligned parts: columns side by side, no join on uid (a join over
    every stage of a 12.8M-row pool peaked at 12 GB)."""
    part = f"part-{index:05d}.parquet"
    frame = pl.read_parquet(shard, columns=pool_columns)
    for name, (_, columns) in stage_columns.items():
        frame = frame.hstack(pl.read_parquet(out_dir / name / part, columns=columns))
    selected = pl.read_parquet(out_dir / SUBSET / part, columns=["uid"])["uid"]
    return frame.with_columns(pl.col("uid").is_in(selected.implode()).alias("selected"))


def value_counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame.group_by(column).len().sort(column, nulls_last=True)
    return {str(value): int(n) for value, n in counts.iter_rows()}


def removed_mask(table: pl.DataFrame, name: str, stage_names: list[str]) -> pl.Expr:
    """Rows stage ``name`` removes that it owns (not those whose reason names another stage)."""
    removed = pl.col(f"{name}_keep").fill_null(False).not_()
    reason = f"{name}_reason"
    others = [other for other in stage_names if other != name]
    if reason in table.columns and others:
        removed = removed & pl.col(reason).fill_null("").is_in(others).not_()
    return removed


def removals(table: pl.DataFrame, stage_names: list[str]) -> dict[str, dict[str, Any]]:
    names = [n for n in stage_names if f"{n}_keep" in table.columns]
    masks = {n: removed_mask(table, n, names) for n in names}
    result = {}
    for name in names:
        removed = table.filter(masks[name])
        others = [masks[n] for n in names if n != name]
        only_here = removed.filter(~pl.any_horizontal(others)) if others else removed
        reason = f"{name}_reason"
        result[name] = {"removed": removed.height, "share_of_pool": _ratio(removed.height, table.height),
                        "removed_only_by_this_stage": only_here.height,
                        "by_reason": value_counts(removed, reason) if reason in removed.columns else {}}
    return result


def funnel(table: pl.DataFrame, select: str) -> list[dict[str, Any]]:
    """Rows left after each top-level AND term of ``select``, in order, and what each term removed."""
    steps, mask = [{"step": "pool", "rows_left": table.height, "removed": 0}], pl.Series(np.ones(table.height, bool))
    for term in parse_select(select).conjuncts():
        kept = evaluate(table, term)
        left = mask & kept
        steps.append({"step": term, "rows_left": int(left.sum()), "removed": int(mask.sum() - left.sum())})
        mask = left
    return steps


def safeguards(report: dict[str, Any], max_share: float = MAX_REMOVED_SHARE) -> list[dict[str, Any]]:
    """The warnings a run must show: stages removing more than ``max_share``, an empty selection."""
    warnings = []
    for name, info in report["stages"].items():
        if report["rows_in"] and info["removed"] > max_share * report["rows_in"]:
            top = sorted(((n, r) for r, n in info["by_reason"].items() if r != "None"), reverse=True)[:3]
            warnings.append({"stage": name, "share": info["share_of_pool"], "top_reasons": {r: n for n, r in top},
                             "message": f"stage {name} removes {info['share_of_pool']:.0%} of the pool "
                                        f"({', '.join(f'{r}={n}' for n, r in top)}): check that it suits this pool"})
    if report["rows_in"] and report["rows_out"] == 0:
        worst = max(report["stages"].items(), key=lambda item: item[1]["removed"], default=None)
        blame = f"; the stage that removes most is {worst[0]} ({worst[1]['removed']} rows)" if worst else ""
        warnings.append({"stage": worst[0] if worst else None, "share": 1.0, "top_reasons": {},
                         "message": f"select {report['select']!r} keeps no row{blame}"})
    return warnings


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def stage_removals(out_dir: Path, name: str, stage_names: list[str]) -> dict[str, Any] | None:
    """One stage's removals read from its own parts (for the log line after it runs), or None for
    a stage that decides nothing (no ``<stage>_keep``)."""
    parts = sorted((out_dir / name).glob("part-*.parquet"))
    if not parts or f"{name}_keep" not in pl.read_parquet_schema(parts[0]):
        return None
    columns = [c for c in (f"{name}_keep", f"{name}_reason") if c in pl.read_parquet_schema(parts[0])]
    frame = pl.scan_parquet([str(p) for p in parts]).select(columns).collect()
    return removals(frame, [name] + [n for n in stage_names if n != name])[name] | {"rows": frame.height}
