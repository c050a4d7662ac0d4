"""The evaluation section of the HTML report: EVAL/report.html, and in a run's report.html when the
run directory holds eval/summary.json (what `make evaluate` writes).

A bar chart of each candidate's average and per-task main metric, mean over seeds with the seed
standard deviation as error bars; the per-task table (mean ± std); the comparisons with their 95%
intervals and what they say.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from curate.reports import page
from curate.runio import atomic_write_text, read_json

log = logging.getLogger(__name__)
SUMMARY = Path("eval") / "summary.json"


def section(summary: dict[str, Any]) -> str:
    tasks = list(summary["tasks"])
    names = list(summary["candidates"])
    columns = [*tasks, "average"]
    figure, axes = page.subplots(figsize=(max(6, 1.6 * len(columns)), 3.2))
    width = 0.8 / max(len(names), 1)
    for index, name in enumerate(names):
        entry = summary["candidates"][name]
        cells = [entry["tasks"][t][summary["tasks"][t]["main_metric"]] for t in tasks] + [entry["average"]]
        axes.bar(np.arange(len(columns)) + index * width, [c["mean"] for c in cells], width,
                 yerr=[c["std"] for c in cells], capsize=3, label=name)
    axes.set_xticks(np.arange(len(columns)) + width * (len(names) - 1) / 2, columns)
    axes.set_ylabel("main metric (mean over seeds)")
    axes.legend(fontsize=8)
    rows = []
    for name, entry in summary["candidates"].items():
        cells = [entry["tasks"][t][summary["tasks"][t]["main_metric"]] for t in tasks] + [entry["average"]]
        rows.append([name, entry["kind"], entry["samples"][0], *[f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells]])
    comparisons = [[c["candidate"], c["baseline"], f"{c['mean']:+.4f}",
                    "n/a" if c["ci95"] is None else f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                    {True: "better", False: "not better than the seed spread", None: "one seed: no interval"}
                    [c["beats_baseline"]]] for c in summary["comparisons"]]
    settings = summary["settings"]
    return (f"<h2>Evaluation</h2><p>{len(names)} subsets x {settings['seeds']} seeds, each a {page.esc(settings['model'])} "
            f"trained from scratch on {settings['samples_seen']} samples seen (batch {settings['batch_size']}, lr "
            f"{settings['lr']}), evaluated zero-shot with CLIP_benchmark. Error bars: standard deviation over seeds.</p>"
            + page.figure_html(figure, "evaluation bar chart")
            + page.table(["subset", "kind", "samples", *[f"{t} ({summary['tasks'][t]['main_metric']})" for t in tasks],
                          "average"], rows)
            + "<p>Candidate minus baseline (average of the main metrics, paired by seed, 95% t-interval):</p>"
            + page.table(["candidate", "baseline", "difference", "95% CI", "verdict"], comparisons))


def write_html(summary: dict[str, Any], path: Path) -> Path:
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>curate evaluation</title>"
                f"<style>{page.STYLE}</style></head><body>{section(summary)}</body></html>")
    atomic_write_text(document, path)
    log.info("wrote %s", path)
    return path


def run_section(run_dir: Path) -> str:
    """The section for a run's report.html, or "" when the run has not been evaluated."""
    path = Path(run_dir) / SUMMARY
    return section(read_json(path)) if path.is_file() else ""
