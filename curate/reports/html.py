"""The HTML curation report: OUT/report.html, one self-contained page per finished run.

- warnings (a stage removing more than the recipe's max_removed_share, an empty selection);
- the funnel: rows left after each term of the recipe's ``select``, in select order, and rows
  removed per stage and reason, each removal under the stage that owns it;
- the ground truth when the pool has one (curate.reports.truth): per stage precision and recall
  against its declared targets, per defect the rows left in the subset, clean samples kept,
  SemDeDup's planted pairs;
- score histograms, threshold marked: ``score_clip`` (threshold: the score stage's fitted
  artifact) and the LAION-2B rule's score column (``min_score``);
- MetaCLIP's head/tail curve (Xu et al. 2023, "Demystifying CLIP Data"), entry counts before and
  after balancing, from OUT/metaclip/_entry_counts.parquet;
- cluster sizes before/after pruning: k-means clusters and SemDeDup (Abbas et al. 2023), DBP's
  clusters and quotas (Abbas et al. 2024);
- sample cards per stage and group (kept, or a removal reason): thumbnail, caption, scores,
  chosen by uid (``pick_samples``); a pool without image bytes gets captions only.

Figures (matplotlib PNGs) and thumbnails (JPEGs) are base64 data URIs: the page needs no server,
no network, no JavaScript. Memory: the decisions table (uid, keep/reason columns) and one pool
shard at a time; image bytes are read only for the rows picked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from curate.errors import PoolError
from curate.pool import list_shards, shard_columns
from curate.reports import evaluation, page
from curate.reports.decisions import decisions
from curate.reports.samples import samples_section
from curate.runio import atomic_write_text, read_json

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
BINS = 50


def write_html_report(run_dir: Path, pool_dir: Path | None = None) -> Path:
    """Write RUN_DIR/report.html (atomically) and return its path."""
    run_dir = Path(run_dir)
    report = read_json(run_dir / "report.json")
    pool_dir = Path(pool_dir or read_json(run_dir / "_run.json")["pool"])
    if not pool_dir.is_dir():
        raise PoolError(f"{run_dir}: the run's pool {pool_dir} is not a directory (pass --pool)")
    stage_names = list(report["stages"])
    table = decisions(pool_dir, run_dir, stage_names)
    sections = [_header(report, run_dir), _warnings(report), _funnel(report), _truth(report),
                _scores(report, run_dir, pool_dir), _metaclip(report, run_dir), _languages(report), _clusters(run_dir),
                evaluation.run_section(run_dir), samples_section(table, stage_names, run_dir, pool_dir)]
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>curate report: {page.esc(run_dir.name)}"
                f"</title><style>{page.STYLE}</style></head><body>{''.join(s for s in sections if s)}</body></html>")
    path = run_dir / REPORT_HTML
    atomic_write_text(document, path)
    log.info("wrote %s (%d KB)", path, len(document) // 1024)
    return path


def _header(report: dict, run_dir: Path) -> str:
    recipe = report.get("recipe", {})
    facts = [["run directory", str(run_dir)], ["pool", report.get("pool")], ["recipe", recipe.get("name")],
             ["engine", report.get("engine")], ["select", report.get("select")],
             ["rows in", report["rows_in"]], ["rows out", report["rows_out"]],
             ["download status", ", ".join(f"{k} {v}" for k, v in (report.get("download_status") or {}).items())],
             ["seconds", report.get("seconds")]]
    return "<h1>Curation report</h1>" + page.table(["", ""], facts)


def _warnings(report: dict) -> str:
    items = "".join(f"<li>{page.esc(w['message'])}</li>" for w in report.get("warnings", []))
    return f"<div class='warn'><b>Warnings</b><ul>{items}</ul></div>" if items else ""


def _funnel(report: dict) -> str:
    steps = [(s["step"], s["rows_left"]) for s in report.get("funnel", [])]
    removals = [(f"{name}: {reason}", n, f"C{index}") for index, (name, info) in enumerate(report["stages"].items())
                for reason, n in info["by_reason"].items()]
    figure, (left, right) = page.subplots(1, 2, figsize=(11, 0.35 * max(len(steps), len(removals), 1) + 1.5))
    left.barh([label[:40] for label, _ in steps][::-1], [n for _, n in steps][::-1], color="#4a7")
    left.set_title("rows left after each term of select")
    for label, n, color in removals[::-1]:
        right.barh(label, n, color=color)
    right.set_title("rows removed, by the stage that owns the reason")
    rows = [[name, info["removed"], info["share_of_pool"], info["removed_only_by_this_stage"],
             ", ".join(f"{reason} {n}" for reason, n in info["by_reason"].items())] for name, info in report["stages"].items()]
    funnel_rows = [[s["step"], s["rows_left"], s["removed"]] for s in report.get("funnel", [])]
    return ("<h2>Funnel</h2>" + page.figure_html(figure, "funnel")
            + page.table(["select, term by term", "rows left", "removed by this term"], funnel_rows)
            + page.table(["stage", "removes", "share of pool", "only this stage", "by reason"], rows))


def _truth(report: dict) -> str:
    truth = report.get("ground_truth")
    if not truth:
        return ""
    stages = [[name, ", ".join(info["targets"]) or "(none)", info["precision"], info["recall"],
               info.get("precision_vs_clean"), ", ".join(f"{d} {n}" for d, n in info["removed_by_defect"].items())]
              for name, info in truth["stages"].items()]
    defects = [[defect, info["rows"], info["left_in_subset"]] for defect, info in truth["subset"].items()]
    parts = ["<h2>Ground truth</h2>",
             f"<p>clean samples kept: <b>{truth['clean_kept']}</b>; known defects removed: "
             f"<b>{truth['defects_removed']}</b></p>",
             page.table(["stage", "targets", "precision", "recall", "precision vs clean", "removed by defect"], stages),
             page.table(["defect", "rows", "left in subset"], defects)]
    if "download" in truth:
        info = truth["download"]
        parts.append(f"<p>download: precision {info['precision']}, recall {info['recall']} of {page.esc(info['targets'])}</p>")
    if "semdedup_pairs" in truth:
        info = truth["semdedup_pairs"]
        parts.append(f"<p>SemDeDup: {info['pairs']} planted duplicate pairs, recall {info['recall']}, "
                     f"precision {info['precision']} ({info['removed']} removed)</p>")
    return "".join(parts)


def _score_sources(report: dict, run_dir: Path, pool_dir: Path) -> list[tuple[str, list[Path], str, float]]:
    """(stage, files, float column, threshold) for each score a stage of this run thresholds."""
    stages = report.get("recipe", {}).get("stages", {})
    sources = []
    if "score" in stages and (run_dir / "score" / "_artifact.parquet").exists():
        threshold = pl.read_parquet(run_dir / "score" / "_artifact.parquet")["threshold"][0]
        sources.append(("score", sorted((run_dir / "score").glob("part-*.parquet")), "score_clip", threshold))
    column = stages.get("laion2b", {}).get("score_column")
    if column and column in shard_columns(list_shards(pool_dir)[0]):
        sources.append(("laion2b", list_shards(pool_dir), column, stages["laion2b"]["min_score"]))
    return sources


def histogram(files: list[Path], column: str, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Counts and edges of the finite values of ``column`` (lazy, streaming), and the rows without one."""
    frame = pl.scan_parquet([str(f) for f in files]).select(pl.col(column).cast(pl.Float64).alias("x"))
    finite = frame.filter(pl.col("x").is_finite())
    low, high, total = frame.select(pl.col("x").filter(pl.col("x").is_finite()).min().alias("low"),
                                    pl.col("x").filter(pl.col("x").is_finite()).max().alias("high"), pl.len()).collect().row(0)
    if low is None:
        return None
    width = (high - low) / bins or 1.0
    index = ((pl.col("x") - low) / width).floor().clip(0, bins - 1).cast(pl.Int64).alias("bin")
    counted = finite.group_by(index).len().collect()
    counts = np.zeros(bins, dtype=np.int64)
    counts[counted["bin"].to_numpy()] = counted["len"].to_numpy()
    return counts, low + width * np.arange(bins + 1), int(total - counts.sum())


def _scores(report: dict, run_dir: Path, pool_dir: Path) -> str:
    parts = []
    for stage, files, column, threshold in _score_sources(report, run_dir, pool_dir):
        result = histogram(files, column)
        if result is None:
            parts.append(f"<p class='note'>{page.esc(stage)}: no finite <code>{page.esc(column)}</code> value.</p>")
            continue
        counts, edges, missing = result
        figure, axes = page.subplots(figsize=(7, 3.2))
        axes.stairs(counts, edges, fill=True, color="#48c")
        if threshold is not None and np.isfinite(threshold):
            axes.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4g}")
            axes.legend()
        axes.set_xlabel(column)
        axes.set_ylabel("rows")
        axes.set_title(f"{stage}: {column}")
        parts.append(page.figure_html(figure, f"{stage} {column} histogram")
                     + f"<p>{missing} row(s) without a finite {page.esc(column)}.</p>")
    return "<h2>Scores</h2>" + "".join(parts) if parts else ""


def _metaclip(report: dict, run_dir: Path) -> str:
    path = run_dir / "metaclip" / "_entry_counts.parquet"
    if "metaclip" not in report.get("stages", {}) or not path.exists():
        return ""
    counts = pl.read_parquet(path, columns=["count_pool", "count_balanced"]).filter(pl.col("count_pool") > 0)
    counts = counts.sort("count_pool", descending=True, maintain_order=True)
    rank = np.arange(1, counts.height + 1)
    figure, axes = page.subplots(figsize=(7, 4))
    axes.loglog(rank, counts["count_pool"].to_numpy(), label="pool (before balancing)")
    axes.loglog(rank, np.maximum(counts["count_balanced"].to_numpy(), 0.8), ".", ms=2, label="after balancing")
    t = (report.get("metaclip") or {}).get("t")
    if t:
        axes.axhline(t, color="k", ls="--", lw=1, label=f"t = {t:,}")
    axes.set_xlabel("entry rank by pool count")
    axes.set_ylabel("texts matching the entry")
    axes.legend()
    return "<h2>MetaCLIP entry counts (head / tail)</h2>" + page.figure_html(figure, "metaclip head/tail")


def _languages(report: dict) -> str:
    """MetaCLIP 2's languages table: captions per language before / after, t, tail mass, head."""
    info = report.get("metaclip_worldwide")
    if not info:
        return ""
    rows = [[row["language"], row["captions"], row["matched"], row["kept"], row["t"], row["entries_reaching_t"],
             row["tail_mass_pool"], row["tail_mass_balanced"],
             ", ".join(f"{h['entry']} {h['count_pool']}→{h['count_balanced']}" for h in row["head"])]
            for row in info["languages"] if row["captions"]]
    header = ["language", "captions", "matched", "kept", "t", "entries reaching t", "tail mass before",
              "tail mass after", "top entries (pool → kept)"]
    unrouted = ", ".join(f"{page.esc(reason)} {n}" for reason, n in info["reasons"].items()
                         if reason in ("no_language", "no_metadata"))
    note = f"<p>Not routed to a list: {unrouted}.</p>" if unrouted else ""
    return "<h2>MetaCLIP 2: languages</h2>" + page.table(header, rows) + note


def cluster_sizes(run_dir: Path) -> dict[str, np.ndarray]:
    """Cluster sizes, descending, per series: k-means clusters before/after SemDeDup, DBP's before/after."""
    series = {}
    if (run_dir / "cluster" / "_manifest.json").exists():
        members = pl.scan_parquet(str(run_dir / "cluster" / "part-*.parquet")).select("uid", "cluster_id")
        members = members.filter(pl.col("cluster_id").is_not_null())
        series["k-means clusters"] = members
        if (run_dir / "semdedup" / "_manifest.json").exists():
            kept = pl.scan_parquet(str(run_dir / "semdedup" / "part-*.parquet")).filter(pl.col("semdedup_keep"))
            series["after SemDeDup"] = members.join(kept.select("uid"), on="uid", how="semi")
    sizes = {name: frame.group_by("cluster_id").len().collect()["len"].to_numpy() for name, frame in series.items()}
    if (run_dir / "dbp" / "clusters.parquet").exists():
        clusters = pl.read_parquet(run_dir / "dbp" / "clusters.parquet", columns=["size", "quota"])
        sizes["DBP clusters"], sizes["after DBP (quotas)"] = clusters["size"].to_numpy(), clusters["quota"].to_numpy()
    return {name: np.sort(values)[::-1] for name, values in sizes.items()}


def _clusters(run_dir: Path) -> str:
    sizes = cluster_sizes(run_dir)
    if not sizes:
        return ""
    figure, axes = page.subplots(figsize=(7, 4))
    for name, values in sizes.items():
        axes.plot(np.arange(1, len(values) + 1), values, label=name, marker="." if len(values) <= 100 else None)
    axes.set_xlabel("cluster rank by size")
    axes.set_ylabel("members")
    largest, smallest = max(v.max() for v in sizes.values()), min(v.min() for v in sizes.values())
    axes.set_yscale("log" if largest > 100 * max(smallest, 1) else "linear")
    axes.legend()
    rows = [[name, len(v), int(v.sum()), int(v.min()), int(np.median(v)), int(v.max())] for name, v in sizes.items()]
    return ("<h2>Cluster sizes before / after pruning</h2>" + page.figure_html(figure, "cluster sizes")
            + page.table(["series", "clusters", "members", "min", "median", "max"], rows))


