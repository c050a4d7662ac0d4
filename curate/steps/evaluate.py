"""`curate evaluate`: does a curated subset train a better CLIP than a random subset of the same size?

DataComp's protocol (Gadre et al. 2023) in miniature: the architecture, the hyperparameters and the
number of samples seen are fixed; only the training data changes; then zero-shot evaluation.

1. Candidates: each RUN_DIR's selection (subset.npy, repeats kept, read as `curate reshard` reads
   it), on the run's pool. Baselines, per seed s: ``random``: for each candidate, the n downloaded
   rows of its pool with the smallest uid-hashed ``sample_u`` (the ``sample`` stage with seed s, run
   by the engine, then ``curate subset``), n the candidate's size; ``no_filter``: every downloaded
   row. Each is a run directory under EVAL/baselines/ with its own subset.npy.
2. Training, per (subset, seed): open_clip_train from scratch (curate.steps.train_dfn's runner), the
   same model, batch, lr, wd and warmup for all, one epoch over exactly ``samples_seen`` rows: the
   subset's samples in successive seeded permutations, so a smaller subset is repeated more often
   (DataComp's rule). Decision: training reads the subset's images exported once per pool at the
   model's input size (EVAL/_images/), not the reshard's full-size tars: the samples are the same, and
   on CPU decoding 300-px JPEGs for a 64-px model would cost more than the training step.
3. Evaluation of each final checkpoint with CLIP_benchmark on TASKS (curate.steps.zeroshot).
4. EVAL/results.parquet (candidate, kind, seed, task, metric, value, main), EVAL/summary.json (mean
   and std over seeds; the average of the main metrics; per candidate and baseline the paired
   difference with a 95% t-interval over seeds), EVAL/report.html, and a table on stdout.

Resumable: a training whose EVAL/train/<subset>/seed<s>/train.json has the same key (settings,
samples, seed) and a checkpoint is not redone; an evaluation whose metrics.json names the same
checkpoint signature and task files is not redone.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curate.engines import Session
from curate.errors import RecipeError
from curate.fingerprint import digest, file_signature
from curate.models import clip as models
from curate.pool import scan_shards, shard_columns
from curate.runio import atomic_write_json, atomic_write_table, read_json
from curate.stages import get_stage
from curate.steps import subset as subset_step
from curate.steps import zeroshot
from curate.steps.eval_summary import summarize
from curate.steps.reshard import load_selection, pool_of_run
from curate.steps.train_dfn import TrainSettings, export_rows, train_open_clip
from curate.uid import pairs_to_uids

log = logging.getLogger(__name__)

BASELINES = ("random", "no_filter")


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    # Defaults: the demo's miniature (9 trainings in ~12 min on 2 CPU cores). DataComp's small
    # scale is ViT-B/32, 12.8M samples seen, batch 4096, lr 5e-4, wd 0.2 (--model ViT-B-32 ...).
    model: str = "curate-tiny-vit"
    samples_seen: int = 10_240
    batch_size: int = 128
    lr: float = 2e-3
    wd: float = 0.1
    warmup: int | None = None      # steps; None: a tenth of them
    seeds: int = 3
    device: str = "auto"
    eval_batch_size: int = 64


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str          # "candidate", "random" or "no_filter"
    run_dir: Path
    pool: Path
    seed: int | None   # a random baseline's seed (its subset differs per seed)
    of: str | None = None  # a random baseline: the candidate whose size it matches


def evaluate(run_dirs: list[Path], tasks: Path, out: Path, settings: EvalSettings, session: Session,
             baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """Train and evaluate every candidate and baseline for every seed; write and return the summary
    (EVAL/report.html is the report layer's: curate.reports.evaluation)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown or settings.seeds < 1 or settings.samples_seen < settings.batch_size:
        raise RecipeError(f"evaluate: baselines must be among {BASELINES} (got {unknown or list(baselines)}), "
                          f"seeds >= 1, samples_seen >= batch_size")
    found = zeroshot.find_tasks(tasks)
    models.resolve(settings.model, models.RANDOM)  # a bad model name fails before any training
    candidates = candidate_runs(run_dirs)
    started = time.perf_counter()
    rows, timings = [], []
    for seed in range(settings.seeds):
        subsets = candidates + baseline_runs(candidates, out, seed, baselines, session)
        for candidate in subsets:
            uids = selection_uids(candidate)
            images = export_images(candidate.pool, out, settings)
            checkpoint, train_seconds = train(candidate, uids, images, out, seed, settings)
            metrics, eval_seconds = evaluate_once(checkpoint, found, candidate, seed, out, settings)
            timings.append({"candidate": candidate.name, "seed": seed, "train_seconds": train_seconds,
                            "eval_seconds": eval_seconds})
            rows += [{"candidate": candidate.name, "kind": candidate.kind, "of": candidate.of, "seed": seed,
                      "samples": len(uids), **row} for row in metrics]
    results = pl.DataFrame(rows)
    atomic_write_table(results.to_arrow(), out / "results.parquet")
    summary = summarize(results, found, asdict(settings), timings, round(time.perf_counter() - started, 1))
    atomic_write_json(summary, out / "summary.json")
    return summary


def candidate_runs(run_dirs: list[Path]) -> list[Candidate]:
    names, result = set(), []
    for run_dir in map(Path, run_dirs):
        load_selection(run_dir)  # a run directory without a subset fails here, naming it
        name, number = run_dir.resolve().name, 2
        while name in names or name in BASELINES or name.startswith("random["):
            name, number = f"{run_dir.resolve().name}-{number}", number + 1
        names.add(name)
        result.append(Candidate(name, "candidate", run_dir, pool_of_run(run_dir), None))
    if not result:
        raise RecipeError("evaluate: name at least one run directory")
    return result


def downloaded_filter(pool: Path) -> str:
    shards = scan_shards(pool)
    columns = shard_columns(shards[0].path) if shards else []
    return "status = 'success'" if "status" in columns else "true"


def baseline_runs(candidates: list[Candidate], out: Path, seed: int, baselines: tuple[str, ...],
                  session: Session) -> list[Candidate]:
    """The baseline subsets for one seed, each a run directory with subset.npy."""
    result = []
    pools = sorted({c.pool for c in candidates}, key=str)
    for pool in pools:
        tag = "" if len(pools) == 1 else f"-{digest(str(pool.resolve()))[:8]}"
        if "no_filter" in baselines:
            run_dir = out / "baselines" / f"no_filter{tag}"
            subset_step.run_subset(pool, run_dir, [], downloaded_filter(pool), session)
            result.append(Candidate(f"no_filter{tag}", "no_filter", run_dir, pool, None))
        if "random" not in baselines:
            continue
        stage = get_stage("sample")
        for candidate in (c for c in candidates if c.pool == pool):
            size = len(load_selection(candidate.run_dir)[0])
            run_dir = out / "baselines" / f"random-{candidate.name}" / f"seed{seed}"
            session.run_stage(stage, stage.config(seed=seed), pool, run_dir)
            threshold = random_threshold(pool, run_dir, size, candidate.name)
            select = f"{downloaded_filter(pool)} AND sample_u <= {threshold!r}"
            subset_step.run_subset(pool, run_dir, ["sample"], select, session)
            result.append(Candidate(f"random[{candidate.name}]", "random", run_dir, pool, seed, candidate.name))
    return result


def random_threshold(pool: Path, run_dir: Path, size: int, name: str) -> float:
    """The ``size``-th smallest sample_u among the pool's downloaded rows."""
    u = pl.scan_parquet(str(run_dir / "sample" / "part-*.parquet")).select("uid", "sample_u")
    if downloaded_filter(pool) != "true":
        ok = pl.scan_parquet([str(s.path) for s in scan_shards(pool)]).filter(pl.col("status") == "success")
        u = u.join(ok.select("uid"), on="uid")
    values = u.select("sample_u").collect()["sample_u"].sort()
    if size > len(values):
        raise RecipeError(f"evaluate: candidate {name} has {size} samples, more than the {len(values)} downloaded "
                          f"rows of its pool; a random subset of that size cannot be drawn")
    return float(values[size - 1])


def selection_uids(candidate: Candidate) -> list[str]:
    pairs, _ = load_selection(candidate.run_dir)
    return pairs_to_uids(pairs)


def export_images(pool: Path, out: Path, settings: EvalSettings) -> dict[str, tuple[str, str]]:
    """uid -> (exported image path, caption), for every downloaded row of the pool with a usable image;
    written once per pool and model input size (EVAL/_images/<key>/)."""
    size = models.model_image_size(settings.model)
    key = digest({"pool": str(Path(pool).resolve()), "size": size,
                  "shards": [file_signature(s.path) for s in scan_shards(pool)]})[:16]
    directory = out / "_images" / key
    index = directory / "_index.parquet"
    if index.is_file():
        table = pl.read_parquet(index)
        return dict(zip(table["uid"], zip(table["path"], table["text"])))
    rows, skipped = export_rows(pool, directory, size)
    uids, paths, texts = (list(column) for column in zip(*rows)) if rows else ([], [], [])
    if skipped:
        log.info("evaluate: %d row(s) of %s have no usable image or caption and are never trained on: %s",
                 sum(skipped.values()), pool, skipped)
    atomic_write_table(pa.table({"uid": uids, "path": paths, "text": texts}), index)
    log.info("evaluate: exported %d images of %s at %d px", len(uids), pool, size)
    return dict(zip(uids, zip(paths, texts)))


def training_rows(uids: list[str], images: dict[str, tuple[str, str]], samples_seen: int, seed: int) -> list[int]:
    """Positions into ``uids`` (those with an exported image): successive seeded permutations,
    truncated to exactly samples_seen."""
    usable = np.array([i for i, uid in enumerate(uids) if uid in images], dtype=np.int64)
    order, passes = [], 0
    while sum(map(len, order)) < samples_seen:
        order.append(usable[np.random.default_rng([seed, passes, 1 << 32]).permutation(len(usable))])
        passes += 1
    return np.concatenate(order)[:samples_seen].tolist()


def train(candidate: Candidate, uids: list[str], images: dict[str, tuple[str, str]], out: Path, seed: int,
          settings: EvalSettings) -> tuple[Path, float]:
    directory = out / "train" / safe(candidate.name) / f"seed{seed}"
    checkpoint, info_path = directory / "model.pt", directory / "train.json"
    usable = sum(uid in images for uid in uids)
    if usable < settings.batch_size:
        raise RecipeError(f"evaluate: {candidate.name} ({candidate.run_dir}) has {usable} usable samples, fewer than "
                          f"one batch ({settings.batch_size}); lower --batch-size or select more")
    key = {"settings": {k: v for k, v in asdict(settings).items() if k not in ("seeds", "eval_batch_size")},
           "seed": seed, "samples": digest(uids)}
    if checkpoint.is_file() and info_path.is_file() and read_json(info_path).get("key") == key:
        log.info("evaluate: %s seed %d is trained already", candidate.name, seed)
        return checkpoint, read_json(info_path)["seconds"]
    started = time.perf_counter()
    work = directory / "_work"
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "train.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows(images[uids[i]] for i in training_rows(uids, images, settings.samples_seen, seed))
    train_settings = TrainSettings(model=settings.model, epochs=1, batch_size=settings.batch_size, lr=settings.lr,
                                   wd=settings.wd, warmup=settings.warmup, seed=seed, device=settings.device)
    data_args = ["--dataset-type", "csv", "--train-data", str(csv_path), "--csv-separator", "\t",
                 "--csv-img-key", "filepath", "--csv-caption-key", "title"]
    log.info("evaluate: training on %s (%d samples, %d unique usable), seed %d, %d samples seen", candidate.name,
             len(uids), len(set(u for u in uids if u in images)), seed, settings.samples_seen)
    run = train_open_clip(data_args, settings.samples_seen, work, checkpoint, train_settings, f"train {candidate.name}")
    shutil.move(work / "train.log", directory / "train.log")
    shutil.rmtree(work)  # the trainer's own checkpoint (with optimizer state) and the csv
    seconds = round(time.perf_counter() - started, 1)
    atomic_write_json({"key": key, "candidate": candidate.name, "run_dir": str(candidate.run_dir), **run,
                       "samples": len(uids), "seconds": seconds}, info_path)
    return checkpoint, seconds


def evaluate_once(checkpoint: Path, tasks: dict[str, Path], candidate: Candidate, seed: int, out: Path,
                  settings: EvalSettings) -> tuple[list[dict], float]:
    path = checkpoint.parent / "metrics.json"
    key = {"checkpoint": file_signature(checkpoint), "tasks": digest(zeroshot.tasks_signature(tasks)),
           "model": settings.model}
    if path.is_file() and read_json(path).get("key") == key:
        cached = read_json(path)
        return cached["rows"], cached["seconds"]
    started = time.perf_counter()
    rows = zeroshot.evaluate_checkpoint(settings.model, checkpoint, tasks, settings.device, settings.eval_batch_size)
    seconds = round(time.perf_counter() - started, 1)
    atomic_write_json({"key": key, "candidate": candidate.name, "seed": seed, "rows": rows, "seconds": seconds}, path)
    return rows, seconds


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
