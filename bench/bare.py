"""Bare implementations of two DataComp baselines, as a user would write them by hand without curate:
read the columns the rule needs from each pool shard, apply the rule with numpy / fastText, write
uid + keep per shard (parquet, zstd), in a process pool of the same size as curate's. No manifests,
markers, fingerprints, reasons or checks: the floor curate's stages are measured against.

- ``bare_score``: DataComp's CLIP-score fraction (``get_threshold``: the value at int(N * f) of the
  scores sorted descending), keep score >= threshold.
- ``bare_basic``: DataComp's basic filter (fastText lid.176 top-1 == en, > 2 words, > 5 chars, shorter
  side >= 200, aspect <= 3), fastText's multilinePredict over each shard's captions.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _write(out: Path, shard: Path, uids: pa.ChunkedArray, keep: np.ndarray) -> None:
    pq.write_table(pa.table({"uid": uids, "keep": keep}), out / shard.name, compression="zstd")


def _scores(shard: Path, column: str) -> np.ndarray:
    return pq.read_table(shard, columns=[column]).column(0).to_numpy(zero_copy_only=False)


def _score_keep(shard: Path, out: Path, column: str, threshold: float) -> None:
    table = pq.read_table(shard, columns=["uid", column])
    scores = table.column(column).to_numpy(zero_copy_only=False)
    _write(out, shard, table.column("uid"), scores >= threshold)


def bare_score(pool: Path, out: Path, workers: int, column: str = "clip_l14_similarity_score",
               fraction: float = 0.3) -> float:
    """Seconds for the whole rule: two passes over the shards, like the stage's fit and apply."""
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(pool.glob("*.parquet"))
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as executor:
        scores = np.concatenate(list(executor.map(_scores, shards, [column] * len(shards))))
        scores = scores[~np.isnan(scores)]
        threshold = float(-np.sort(-scores)[int(len(scores) * fraction)])
        list(executor.map(_score_keep, shards, [out] * len(shards), [column] * len(shards),
                          [threshold] * len(shards)))
    return time.perf_counter() - started


def _basic_keep(shard: Path, out: Path) -> None:
    import fasttext

    from curate.models.langid import fasttext_model_path

    model = fasttext.load_model(str(fasttext_model_path())).f  # the binding: one call per shard
    table = pq.read_table(shard, columns=["uid", "text", "original_width", "original_height"])
    texts = [text or "" for text in table.column("text").to_pylist()]
    labels = model.multilinePredict([text.replace("\n", " ") + "\n" for text in texts], 1, 0.0, "strict")
    english = np.array([bool(label) and label[0] == "__label__en" for label in labels])
    words = np.array([len(text.split()) for text in texts])
    chars = np.array([len(text) for text in texts])
    width = table.column("original_width").to_numpy(zero_copy_only=False).astype(float)
    height = table.column("original_height").to_numpy(zero_copy_only=False).astype(float)
    short, long = np.minimum(width, height), np.maximum(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = english & (words > 2) & (chars > 5) & (short >= 200) & (long / short <= 3)
    _write(out, shard, table.column("uid"), keep)


def bare_basic(pool: Path, out: Path, workers: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(pool.glob("*.parquet"))
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as executor:
        list(executor.map(_basic_keep, shards, [out] * len(shards)))
    return time.perf_counter() - started
