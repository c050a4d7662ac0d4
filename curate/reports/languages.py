"""MetaCLIP 2's per-language concept-frequency report (Chuang et al. 2025, "MetaCLIP 2: A Worldwide
Scaling Recipe"), DESIGN.md 4.7: from a run whose ``metaclip_worldwide`` stage is complete.

Per language (report.json's "metaclip_worldwide", a table in report.html): captions identified as
the language, matched, kept by the balancing; its t; entries with a list, matched, reaching t;
the tail mass (share of the language's entry matches on entries with pool count < t) before and
after balancing; the top entries' counts before -> after. Plus the captions that could not be
routed (no language, no list for their language), which the worldwide rule drops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

HEAD = 5
STAGE, MATCH = "metaclip_worldwide", "metaclip_worldwide_match"


def _rows(out_dir: Path) -> pl.DataFrame:
    """uid, language, entries, keep, reason per row (the two stages' parts joined by uid)."""
    matches = pl.scan_parquet(str(out_dir / MATCH / "part-*.parquet")).select(
        "uid", pl.col("metaclip_worldwide_lang").alias("language"), pl.col("metaclip_worldwide_entries").alias("entries"))
    decisions = pl.scan_parquet(str(out_dir / STAGE / "part-*.parquet")).select(
        "uid", pl.col("metaclip_worldwide_keep").alias("keep"), pl.col("metaclip_worldwide_reason").alias("reason"))
    return matches.join(decisions, on="uid", how="inner").collect()


def _share(part: float, whole: float) -> float | None:
    return round(float(part) / float(whole), 4) if whole else None


def language_summary(out_dir: Path) -> dict[str, Any]:
    """The per-language table and the unrouted counts."""
    out_dir = Path(out_dir)
    artifact = pq.read_table(out_dir / STAGE / "_artifact.parquet").to_pandas()
    rows = _rows(out_dir)
    size = len(artifact)
    kept_ids = rows.filter(pl.col("keep")).select(pl.col("entries").explode()).drop_nulls()["entries"].to_numpy()
    balanced = np.bincount(kept_ids, minlength=size)[:size] if kept_ids.size else np.zeros(size, np.int64)
    per_language = rows.group_by("language").agg(
        pl.len().alias("captions"), (pl.col("entries").list.len() > 0).sum().alias("matched"),
        pl.col("keep").sum().alias("kept")).drop_nulls("language")
    captions = {r["language"]: r for r in per_language.to_dicts()}
    table = []
    for language, group in artifact.groupby("language", sort=True):
        ids = group["entry_id"].to_numpy()
        pool, after, t = group["count"].to_numpy(), balanced[ids], int(group["t"].iloc[0])
        tail = pool < t
        top = np.argsort(-pool, kind="stable")[:HEAD]
        seen = captions.get(language, {})
        table.append({"language": language, "captions": int(seen.get("captions", 0)),
                      "matched": int(seen.get("matched", 0)), "kept": int(seen.get("kept", 0)), "t": t,
                      "entries": len(ids), "entries_matched": int((pool > 0).sum()),
                      "entries_reaching_t": int((pool >= t).sum()),
                      "tail_mass_pool": _share(pool[tail].sum(), pool.sum()),
                      "tail_mass_balanced": _share(after[tail].sum(), after.sum()),
                      "head": [{"entry": group["entry"].iloc[i], "count_pool": int(pool[i]),
                                "count_balanced": int(after[i])} for i in top if pool[i] > 0]})
    table.sort(key=lambda row: -row["captions"])
    reasons = rows["reason"].value_counts().to_dicts()
    unlisted = rows.filter(pl.col("reason") == "no_metadata").group_by("language").len().sort("len", descending=True)
    return {"languages": table, "reasons": {str(r["reason"]): int(r["count"]) for r in reasons},
            "languages_without_metadata": {r["language"]: int(r["len"]) for r in unlisted.head(20).to_dicts()}}


def summary_lines(info: dict[str, Any]) -> list[str]:
    parts = [f"{row['language']} {row['captions']}->{row['kept']} (t={row['t']})"
             for row in info["languages"][:8] if row["captions"]]
    lines = ["  metaclip_worldwide: captions per language before -> after: " + ", ".join(parts)]
    if info["languages_without_metadata"]:
        lines.append("  metaclip_worldwide: no list for " + ", ".join(
            f"{language} ({n})" for language, n in info["languages_without_metadata"].items()))
    return lines
