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
in two fit passes (curate.stage.Fit). Each float32 score maps to an order-preserving uint32 key
(-0.0 counted as 0.0, as ``>=`` does); pass 1 counts rows per top-16-bit bucket (NaN rows in
bucket -1), and finds the bucket holding descending rank k; pass 2 counts the low 16 bits
inside that bucket, which gives the exact key, hence the exact float32 threshold. Partials
have at most 65,537 rows whatever the pool size.

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
import pyarrow.compute as pc

from curate.kernels.embeddings import as_fixed_size, decode, embedding_columns, sidecar_path
from curate.kernels.rules import decide
from curate.contract import Fit, RecipeError, Stage

log = logging.getLogger(__name__)

BUCKET_BITS = 16
NAN_BUCKET = -1
HISTOGRAM = pa.schema([("bin", pa.int64()), ("rows", pa.int64())])
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


def embedding_source_key(source: str) -> str:
    """Where the engines file a source's manifest: the stage name, or "pool:<sidecar dir>"."""
    return source if source == "embed" else f"pool:{sidecar_path(source)}"


def check_model(stage: str, source: str, model: str | None, manifests: dict[str, dict]) -> None:
    """Refuse embeddings made by another model. An imported sidecar's manifest has ``model``; a
    stage's manifest has its resolved config, so ``config.model`` is read as well."""
    if model is None:
        return
    manifest = manifests.get(embedding_source_key(source)) or {}
    recorded = manifest.get("model") or (manifest.get("config") or {}).get("model")
    if recorded is None:
        raise RecipeError(f"{stage}: the recipe names model {model!r}, but the {source!r} embeddings' manifest "
                          f"records no model; drop {stage}.model or recompute the embeddings")
    if recorded != model:
        raise RecipeError(f"{stage}: the recipe names model {model!r}, but the {source!r} embeddings were made "
                          f"by {recorded!r} (pretrained {manifest.get('pretrained')!r}); use embeddings of {model!r}")


def embedding_matrix(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """float32 (n, dim) matrix of an embedding column, and per-row problem masks:
    no_embedding (null), non_finite, zero_norm. Problem rows are all-NaN in the matrix."""
    column = as_fixed_size(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    if not pa.types.is_fixed_size_binary(column.type) or column.type.byte_width % 2:
        raise ValueError(f"{name}: expected float16 embeddings (fixed_size_binary of an even width), got {column.type}")
    missing = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
    matrix = decode(column).astype(np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    non_finite = ~missing & ~finite
    zero = ~missing & finite & ~(matrix != 0).any(axis=1)
    matrix[missing | non_finite | zero] = np.nan
    return matrix, [("no_embedding", missing), ("non_finite", non_finite), ("zero_norm", zero)]


def cosine(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float32 of L2-normalised vectors; NaN where either row is NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        image = image / np.sqrt((image * image).sum(axis=1, dtype=np.float32))[:, None]
        text = text / np.sqrt((text * text).sum(axis=1, dtype=np.float32))[:, None]
        return (image * text).sum(axis=1, dtype=np.float32)


def scores(table: pa.Table, cfg: ScoreConfig) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """float32 score per row and the masks of rows without a usable score."""
    if cfg.score_column is not None:
        column = pc.cast(table.column(cfg.score_column), pa.float32())
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32)  # null -> NaN
        return values, [("no_score", np.isnan(values))]
    image_name, text_name = (spec.rpartition(":")[2] for spec in embedding_columns(cfg.embeddings))
    image, image_checks = embedding_matrix(table.column(image_name), image_name)
    text, text_checks = embedding_matrix(table.column(text_name), text_name)
    if image.shape[1] and text.shape[1] and image.shape[1] != text.shape[1]:
        raise ValueError(f"score: {cfg.embeddings!r} image embeddings have dimension {image.shape[1]} but text "
                         f"embeddings {text.shape[1]}; both must come from one model")
    problems = [(name, image_bad | text_bad) for (name, image_bad), (_, text_bad) in zip(image_checks, text_checks)]
    if not image.shape[1] or not text.shape[1]:  # (Spark) a batch where one column holds no embedding at all
        return np.full(table.num_rows, np.nan, np.float32), problems
    return cosine(image, text), problems


def order_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 keys in the same order (-0.0 as 0.0); callers drop NaN first."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def key_value(key: int) -> np.float32:
    """The float32 whose order key is ``key`` (inverse of order_keys)."""
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def histogram(bins: np.ndarray) -> pa.Table:
    values, counts = np.unique(bins.astype(np.int64), return_counts=True)
    return pa.table({"bin": values, "rows": counts.astype(np.int64)}, schema=HISTOGRAM)


def score_histogram(table: pa.Table, cfg: ScoreConfig, previous: pa.Table | None) -> pa.Table:
    """Partial. Pass 1: rows per top-16-bit key bucket (NaN in bucket -1). Pass 2: rows per
    low 16 bits inside the bucket pass 1 chose. Nothing with a threshold or when pass 1 settled it."""
    if cfg.threshold is not None or table.num_rows == 0:
        return HISTOGRAM.empty_table()
    values, _ = scores(table, cfg)
    present = ~np.isnan(values)
    keys = order_keys(values[present])
    if previous is None:
        bins = np.concatenate([keys >> np.uint32(BUCKET_BITS), np.full((~present).sum(), NAN_BUCKET)])
        return histogram(bins)
    bucket = previous.column("bucket")[0].as_py()
    if bucket < 0:
        return HISTOGRAM.empty_table()
    inside = keys[(keys >> np.uint32(BUCKET_BITS)) == bucket]
    return histogram(inside & np.uint32((1 << BUCKET_BITS) - 1))


def find_rank(bins: np.ndarray, rows: np.ndarray, rank: int) -> tuple[int, int, int]:
    """In a histogram, the bin holding descending rank ``rank`` (0-based), the rank inside it,
    and the rows in higher bins."""
    order = np.argsort(-bins, kind="stable")
    bins, cumulative = bins[order], np.cumsum(rows[order])
    position = int(np.searchsorted(cumulative, rank, side="right"))
    above = int(cumulative[position - 1]) if position else 0
    return int(bins[position]), rank - above, above


def settle_threshold(merged: pa.Table, cfg: ScoreConfig, previous: pa.Table | None) -> pa.Table:
    """Finalize. Pass 1 picks the bucket (or settles the edge cases); pass 2 the exact threshold."""
    bins = merged.column("bin").to_numpy().astype(np.int64)
    rows = merged.column("rows").to_numpy().astype(np.int64)
    if cfg.threshold is not None:
        return _artifact(-1, 0, 0, 0, 0, np.float32(cfg.threshold), -1)
    if previous is None:
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
    settled = previous.to_pylist()[0]
    if settled["bucket"] < 0:
        return previous
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


STAGE = Stage(
    name="score",
    config=ScoreConfig,
    reads=reads,
    adds=pa.schema([("score_clip", pa.float32()), ("score_keep", pa.bool_()), ("score_reason", pa.string())]),
    apply=apply,
    fit=Fit(partial=score_histogram, keys=("bin",), finalize=settle_threshold, passes=2),
    summary="CLIP score: cosine of image and text embeddings; keep the pool's top fraction or above a threshold",
    check_inputs=lambda cfg, manifests: check_model("score", cfg.embeddings, cfg.model, manifests),
)
