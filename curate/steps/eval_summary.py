"""The numbers `curate evaluate` reports: per candidate and task, the mean and spread over seeds;
the average of the tasks' main metrics; each candidate against each baseline.

- ``std`` is the sample standard deviation over seeds (ddof 1; 0 with one seed);
- ``average``: per seed, the mean over tasks of each task's main metric (DataComp's average),
  then mean and std of those over seeds;
- a comparison pairs a candidate with a baseline seed by seed (the same training seed; a random
  baseline's subset also changes with the seed): the difference of the averages per seed, its
  mean, and the 95% t-interval mean ± t(0.975, n-1) x sd / sqrt(n) (null with one seed).
  ``beats_baseline`` is true when the whole interval is above 0: the difference is larger than
  the seed-to-seed spread explains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl


def _stats(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)) if len(array) > 1 else 0.0, 4),
            "values": [round(float(v), 4) for v in array]}


def interval(differences: list[float]) -> dict[str, Any]:
    from scipy import stats

    array = np.asarray(differences, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return {"mean": round(mean, 4), "ci95": None, "seeds": len(array), "beats_baseline": None}
    half = float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / np.sqrt(len(array)))
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "seeds": len(array),
            "beats_baseline": bool(mean - half > 0)}


def averages(results: pl.DataFrame) -> pl.DataFrame:
    """candidate, seed, average of the main metrics over tasks."""
    return (results.filter(pl.col("main")).group_by("candidate", "seed").agg(pl.col("value").mean().alias("average"))
            .sort("candidate", "seed"))


def summarize(results: pl.DataFrame, tasks: dict[str, Any], settings: dict[str, Any], timings: list[dict],
              seconds: float) -> dict[str, Any]:
    main = results.filter(pl.col("main"))
    info = main.select("task", "metric", "type", "datacomp_metric").unique("task").sort("task")
    summary: dict[str, Any] = {"settings": settings, "seconds": seconds,
                               "tasks": {row["task"]: {"main_metric": row["metric"], "type": row["type"],
                                                       "datacomp_metric": row["datacomp_metric"],
                                                       "directory": str(tasks[row["task"]])}
                                         for row in info.iter_rows(named=True)},
                               "candidates": {}, "comparisons": []}
    per_seed = averages(results)
    for (name,), group in results.group_by("candidate", maintain_order=True):
        first = group.row(0, named=True)
        entry = {"kind": first["kind"], "of": first["of"], "samples": sorted(set(group["samples"].to_list())), "tasks": {}}
        for (task, metric), cell in group.group_by("task", "metric", maintain_order=True):
            entry["tasks"].setdefault(task, {})[metric] = _stats(cell.sort("seed")["value"].to_list())
        entry["average"] = _stats(per_seed.filter(pl.col("candidate") == name)["average"].to_list())
        entry["timing"] = {key: round(float(np.mean([t[key] for t in timings if t["candidate"] == name])), 1)
                           for key in ("train_seconds", "eval_seconds")}
        summary["candidates"][name] = dict(sorted(entry.items()))
    for name, entry in summary["candidates"].items():
        if entry["kind"] != "candidate":
            continue
        for base_name, base in summary["candidates"].items():
            if base["kind"] == "candidate" or (base["kind"] == "random" and base["of"] != name):
                continue
            mine = dict(per_seed.filter(pl.col("candidate") == name).select("seed", "average").iter_rows())
            theirs = dict(per_seed.filter(pl.col("candidate") == base_name).select("seed", "average").iter_rows())
            seeds = sorted(set(mine) & set(theirs))
            summary["comparisons"].append({"candidate": name, "baseline": base_name, "kind": base["kind"],
                                           **interval([mine[s] - theirs[s] for s in seeds])})
    return summary


def table_lines(summary: dict[str, Any]) -> list[str]:
    tasks = list(summary["tasks"])
    width = max([len(n) for n in summary["candidates"]] + [9])
    lines = [f"{'candidate':<{width}}  {'samples':>7}  " + "  ".join(f"{t[:14]:>14}" for t in [*tasks, "average"])]
    for name, entry in summary["candidates"].items():
        cells = [entry["tasks"][t][summary["tasks"][t]["main_metric"]] for t in tasks] + [entry["average"]]
        lines.append(f"{name:<{width}}  {entry['samples'][0]:>7}  " +
                     "  ".join(f"{c['mean']:>7.4f}±{c['std']:<6.4f}" for c in cells))
    lines.append("main metrics: " + ", ".join(f"{t} {i['main_metric']}" for t, i in summary["tasks"].items()))
    for row in summary["comparisons"]:
        ci = "n/a (one seed)" if row["ci95"] is None else f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]"
        verdict = "" if row["beats_baseline"] is None else (" better" if row["beats_baseline"] else
                                                          " not better than the seed spread")
        lines.append(f"{row['candidate']} - {row['baseline']}: average {row['mean']:+.4f}, 95% CI {ci}{verdict}")
    return lines
