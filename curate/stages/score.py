"""CLIP score filtering: DataComp's "CLIP score" baselines (Gadre et al. 2023, "DataComp: In
search of the next generation of multimodal datasets"; mlfoundations/datacomp
``baselines/apply_filter.py``), DESIGN.md 4.1, and any filter network's score (4.5, Fang et al.
2023, "Data Filtering Networks").

Score: ``score_clip`` = the cosine similarity of a sample's image and text embeddings (any
embedding set: this run's ``embed`` stage, or a pool sidecar such as the imported DataComp
``b32``/``l14``), computed in float32 from the stored float16 values, each L2-normalised
first; or, with ``score_column``, an existing column read as float32 (DataComp's
``clip_l14_similarity_score``: its baselines threshold that column, not the npz).

Keep (exactly one of):
- ``threshold`` t: ``score >= float32(t)`` (a float32 column compared with a Python float, as
  numpy/pandas do in DataComp's ``df[key] >= threshold``);
- ``fraction`` f, over the WHOLE pool: with N = every row of the pool (NaN/missing scores
  included: DataComp's ``get_threshold`` takes ``len(df)`` and ``-np.sort(-scores)[int(N * f)]``,
  which sorts NaN last), the threshold is the value at descending index k = int(N * f) and
  ``score >= threshold`` keeps k + 1 rows plus ties. NaN never passes. Where DataComp's code
  leaves room: when k falls among the NaN rows the threshold is NaN and nothing is kept (what
  its ``>= NaN`` does; logged as a warning); when k >= N (f = 1, or an empty pool) DataComp
  raises IndexError, and we keep every scored row.

Exact at any scale with memory independent of N: the threshold is found by a radix selection
in two fit passes (curate.kernels.quantile): pass ``coarse`` counts rows per top-16-bit bucket of
an order-preserving key (NaN rows in bucket -1) and finds the bucket holding descending rank k;
pass ``fine`` counts the low 16 bits inside that bucket, which gives the exact key, hence the
exact float32 threshold. Partials have at most 65,537 rows whatever the pool size.

Columns added: ``score_clip`` (float32; NaN where there is no usable score), ``score_keep``,
``score_reason`` (null when kept, else no_embedding (a null embedding), non_finite (NaN/Inf in
an embedding), zero_norm, no_score (a null or NaN ``score_column`` value), below_threshold).

Structural problems stop the stage: image and text embeddings of different dimensions, an
odd byte width, or (with ``model`` set) embeddings whose manifest names another model or none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.contract import Fit, Pass, Stage
from curate.errors import RecipeError
from curate.kernels.embeddings import check_embeddings, embedding_columns
from curate.kernels.quantile import BUCKET_BITS, HISTOGRAM, LOW_MASK, find_rank, histogram, key_value, order_keys
from curate.kernels.rules import decide, float_values
from curate.kernels.vectors import cosine, embedding_matrix

log = logging.getLogger(__name__)

NAN_BUCKET = -1
ARTIFACT = pa.schema([("bucket", pa.int64()), ("rank", pa.int64()), ("above", pa.int64()), ("rows", pa.int64()),
                      ("index", pa.int64()), ("threshold", pa.float32()), ("selected", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    # Defaults: DataComp's best CLIP-score baseline (Gadre et al. 2023): OpenAI ViT-L/14 score,
    # top 30% of the pool, read from the pool's own score column as DataComp's code does.
    embeddings: str | None = None       # "embed" (this run's embed stage) or a pool sidecar, e.g. "l14"
    score_column: str | None = "clip_l14_similarity_score"  # or an existing score column instead
    fraction: float | None = 0.3        # keep the top fraction of the whole pool ...
    threshold: float | None = None      # ... or every score >= threshold (exactly one of the two)
    model: str | None = None            # refuse embeddings whose manifest names another model
    random_weights_ok: bool = False     # accept embeddings made with random weights (recipe: random_weights)

    def __post_init__(self):
        if (self.embeddings is None) == (self.score_column is None):
            raise RecipeError("score: set exactly one of embeddings (e.g. l14, embed) and score_column "
                              "(set score_column: null to score embeddings)")
        if (self.fraction is None) == (self.threshold is None):
            raise RecipeError("score: set exactly one of fraction and threshold (set fraction: null for a threshold)")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise RecipeError(f"score: fraction must be within [0, 1], got {self.fraction}")
        if self.model is not None and self.embeddings is None:
            raise RecipeError("score: model names the embeddings' model; a score_column has no manifest to check")


def scores(table: pa.Table, cfg: ScoreConfig) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """float32 score per row and the masks of rows without a usable score."""
    if cfg.score_column is not None:
        values = float_values(table.column(cfg.score_column), cfg.score_column).astype(np.float32)  # null -> NaN
        return values, [("no_score", np.isnan(values))]
    image_name, text_name = (spec.rpartition(":")[2] for spec in embedding_columns(cfg.embeddings))
    image, image_checks = embedding_matrix(table.column(image_name), image_name)
    text, text_checks = embedding_matrix(table.column(text_name), text_name)
    if image.shape[1] and text.shape[1] and image.shape[1] != text.shape[1]:
        raise RecipeError(f"score: the {cfg.embeddings!r} image embeddings have dimension {image.shape[1]} but its "
                          f"text embeddings {text.shape[1]}; both must come from one model")
    problems = [(name, image_bad | text_bad) for (name, image_bad), (_, text_bad) in zip(image_checks, text_checks)]
    if not image.shape[1] or not text.shape[1]:  # (Spark) a batch where one column holds no embedding at all
        return np.full(table.num_rows, np.nan, np.float32), problems
    return cosine(image, text), problems


def coarse_histogram(table: pa.Table, cfg: ScoreConfig, previous: pa.Table | None) -> pa.Table:
    """Pass ``coarse``: rows per top-16-bit key bucket, NaN rows in bucket -1 (nothing with a threshold)."""
    if cfg.threshold is not None or table.num_rows == 0:
        return HISTOGRAM.empty_table()
    values, _ = scores(table, cfg)
    present = ~np.isnan(values)
    keys = order_keys(values[present])
    return histogram(np.concatenate([keys >> np.uint32(BUCKET_BITS), np.full((~present).sum(), NAN_BUCKET)]))


def fine_histogram(table: pa.Table, cfg: ScoreConfig, previous: pa.Table) -> pa.Table:
    """Pass ``fine``: rows per low 16 bits inside the bucket ``coarse`` chose (nothing when it settled it)."""
    bucket = previous.column("bucket")[0].as_py()
    if bucket < 0 or table.num_rows == 0:
        return HISTOGRAM.empty_table()
    values, _ = scores(table, cfg)
    keys = order_keys(values[~np.isnan(values)])
    return histogram(keys[(keys >> np.uint32(BUCKET_BITS)) == bucket] & np.uint32(LOW_MASK))


def choose_bucket(merged: pa.Table, cfg: ScoreConfig, previous: None) -> pa.Table:
    """Finalize ``coarse``: the bucket holding descending index int(N * f), or the settled edge cases."""
    if cfg.threshold is not None:
        return _artifact(-1, 0, 0, 0, 0, np.float32(cfg.threshold), -1)
    bins = merged.column("bin").to_numpy().astype(np.int64)
    rows = merged.column("rows").to_numpy().astype(np.int64)
    total, scored = int(rows.sum()), int(rows[bins >= 0].sum())
    index = int(total * cfg.fraction)
    if index >= total:  # f = 1 or an empty pool: DataComp's index is out of range; keep every score
        return _artifact(-1, 0, scored, total, index, np.float32(-np.inf), scored)
    if index >= scored:
        log.warning("score: descending index %d of %d rows falls among the %d rows without a score: the "
                    "threshold is NaN and nothing is kept (DataComp's rule)", index, total, total - scored)
        return _artifact(-1, 0, 0, total, index, np.float32(np.nan), 0)
    bucket, rank, above = find_rank(bins[bins >= 0], rows[bins >= 0], index)
    return _artifact(bucket, rank, above, total, index, np.float32(np.nan), -1)


def settle_threshold(merged: pa.Table, cfg: ScoreConfig, previous: pa.Table) -> pa.Table:
    """Finalize ``fine``: the exact float32 threshold and how many rows it keeps."""
    settled = previous.to_pylist()[0]
    if settled["bucket"] < 0:
        return previous
    bins = merged.column("bin").to_numpy().astype(np.int64)
    rows = merged.column("rows").to_numpy().astype(np.int64)
    low, _, above_in_bucket = find_rank(bins, rows, settled["rank"])
    threshold = key_value((settled["bucket"] << BUCKET_BITS) | low)
    selected = settled["above"] + above_in_bucket + int(rows[bins == low].sum())
    log.info("score: threshold %r at descending index %d of %d rows keeps %d", float(threshold), settled["index"],
             settled["rows"], selected)
    return _artifact(-1, 0, settled["above"], settled["rows"], settled["index"], threshold, selected)


def _artifact(bucket: int, rank: int, above: int, rows: int, index: int, threshold: np.float32,
              selected: int) -> pa.Table:
    return pa.table({"bucket": [bucket], "rank": [rank], "above": [above], "rows": [rows], "index": [index],
                     "threshold": pa.array([threshold], pa.float32()), "selected": [selected]}, schema=ARTIFACT)


def apply(table: pa.Table, cfg: ScoreConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("score: the threshold was not fitted; run the stage through an engine")
    values, problems = scores(table, cfg)
    threshold = np.float32(artifact.column("threshold")[0].as_py())
    missing = np.zeros(table.num_rows, dtype=bool)
    for _, mask in problems:
        missing |= mask
    with np.errstate(invalid="ignore"):
        below = ~missing & ~(values >= threshold)
    keep, reason = decide([*problems, ("below_threshold", below)], table.num_rows)
    return pa.table({"score_clip": pa.array(values, pa.float32()), "score_keep": keep, "score_reason": reason})


def reads(cfg: ScoreConfig) -> tuple[str, ...]:
    return (cfg.score_column,) if cfg.score_column is not None else embedding_columns(cfg.embeddings)


def check_inputs(cfg: ScoreConfig, manifests: dict[str, dict]) -> None:
    if cfg.embeddings is not None:
        check_embeddings("score", cfg.embeddings, cfg.model, cfg.random_weights_ok, manifests)


STAGE = Stage(
    name="score",
    config=ScoreConfig,
    reads=reads,
    adds=pa.schema([("score_clip", pa.float32()), ("score_keep", pa.bool_()), ("score_reason", pa.string())]),
    apply=apply,
    fit=Fit(passes=(Pass("coarse", HISTOGRAM, ("bin",), coarse_histogram, choose_bucket),
                    Pass("fine", HISTOGRAM, ("bin",), fine_histogram, settle_threshold))),
    summary="CLIP score: cosine of image and text embeddings; keep the pool's top fraction or above a threshold",
    check_inputs=check_inputs,
)
