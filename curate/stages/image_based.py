"""DataComp's image-based baseline (Gadre et al. 2023, "DataComp: In search of the next generation
of multimodal datasets"; mlfoundations/datacomp ``baselines/image_based_clustering.py`` and
``baselines/apply_filter.py``: ``caption_filter``, ``image_filter_helper``), DESIGN.md 4.1.

1. Caption filter: fastText lid.176 top-1 of ``text.replace("\\n", " ")`` is "en", more than one
   fastText token (``len(fasttext.tokenize(text)) > 1`` on the raw text: tokens are split on
   space, \\t, \\v, \\f, \\r, NUL and \\n, and every \\n also counts as an end-of-line token "</s>"),
   and ``len(text) > 5``. No size rule.
2. Clusters: k-means (faiss) of the pool's image embeddings (DataComp: OpenAI ViT-L/14, the npz
   ``l14_img``), with DataComp's settings: k = 100,000, 20 iterations, seed 0, plain L2 k-means
   (``faiss.Clustering`` defaults; ``spherical: true`` normalises the centroids instead), no
   subsampling by faiss, trained on the caption-filtered pool. The training set is collected
   through the stage's fit: each batch passes on its caption-filtered rows whose uid-hashed
   uniform (curate.uid.uid_uniform) is below ``sample_fraction`` (DataComp: all rows of small
   and medium, 0.3 of large, 0.03 of xlarge), keyed by uid, so the engines' merge is an identity
   and hands ``finalize`` the sample in uid order whatever the partitioning.
   On 2 CPU cores faiss needs days at k = 100,000 on 12.8M rows (the fit logs its projected time and,
   over an hour, the faster settings). ``kmeans: torch`` trains with curate's Lloyd k-means on
   ``device`` (a GPU: curate.kernels.kmeans_torch) instead: the same algorithm and settings, but its
   own initial draw and float32 reductions, so its centroids (and the subset) are not DataComp's
   byte for byte. Each row's nearest centroid is scored on ``device`` too (a GPU when torch sees one);
   that assignment is exact, so it gives the same ids on every device.
3. Targets: the centroid nearest (largest dot product) to each target embedding. DataComp's
   targets are the ImageNet-1k training images embedded by the same model; offline, any
   (n, dim) set from the same model, e.g. the text embeddings of the ImageNet class prompts,
   given as ``targets`` (a .npy, or a .parquet with one float16 embedding column as written by
   curate.kernels.embeddings or a list<float> column).
4. Keep a sample iff it passes the caption filter and its nearest centroid (largest dot
   product, first on ties) is the nearest centroid of at least one target.

The artifact is the centroids with a ``target`` flag, so ``apply`` needs nothing else. The
largest dot product is decided exactly enough that it cannot depend on batching: float32 scores
pick the candidates within a rigorous rounding bound of the best, float64 decides among them.

Columns added: ``image_based_keep``; ``image_based_reason`` (null when kept, else no_text,
not_english, few_tokens, too_short, no_embedding, non_finite, zero_norm, not_target_cluster);
``image_based_cluster`` (int32 nearest centroid, null without a usable embedding).

Decisions where DataComp's code leaves room: NaN/Inf or all-zero image embeddings are never
selected (its argmax would put them in cluster 0); a null caption is no_text; a sample_fraction
below 1 draws each row once by uid hash (DataComp's ``np.random.choice`` draws per shard, with
replacement), so the sample does not depend on sharding. faiss trains single-threaded (curate.kernels.kmeans;
it gave identical centroids with 1 and 2 threads here); both engines train in the driver on the same
uid-ordered sample. The intersect
baseline (CLIP score first, then image-based) is ``score_keep AND image_based_keep``: DataComp
clusters and picks target clusters on the whole pool, thresholds on the whole pool, and only
then intersects (``load_uids_with_image_filter`` with a fraction), so the stages are independent.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.contract import Fit, Pass, Stage, file_field
from curate.errors import RecipeError
from curate.kernels import kmeans, kmeans_torch
from curate.kernels.embeddings import as_fixed_size, check_embeddings, decode, embedding_columns
from curate.kernels.rules import char_lengths, decide, is_null
from curate.kernels.vectors import embedding_matrix
from curate.models.langid import fasttext_top1
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

FASTTEXT_WORD = re.compile("[^ \t\v\f\r\n\x00]+")  # fastText Dictionary::readWord separators
SAMPLE_SCHEMA = pa.schema([("uid", pa.string()), ("image_emb", pa.binary()), ("rows", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class ImageBasedConfig:
    # Defaults: DataComp's image-based baseline (Gadre et al. 2023; image_based_clustering.py).
    embeddings: str = "l14"             # OpenAI ViT-L/14 image embeddings (npz l14_img), or "embed", "b32"
    model: str | None = None            # refuse embeddings whose manifest names another model
    targets: str | None = file_field()  # (n, dim) target embeddings, .npy or .parquet (required)
    clusters: int = 100_000             # --num_clusters 100000
    iterations: int = 20                # cluster.niter = 20
    spherical: bool = False             # faiss.Clustering default: L2 k-means
    sample_fraction: float = 1.0        # share of caption-filtered rows k-means trains on
    seed: int = 0                       # k-means seed and uid-hash seed
    language: str = "en"
    min_tokens_exclusive: int = 1       # len(fasttext.tokenize(text)) > 1
    min_chars_exclusive: int = 5        # len(text) > 5
    random_weights_ok: bool = False     # accept embeddings made with random weights (recipe: random_weights)
    kmeans: str = "faiss"               # "faiss": faiss' k-means on the CPU, DataComp's own centroids; "torch":
    #                                     curate's Lloyd k-means on `device` (a GPU; curate.kernels.kmeans_torch)
    device: str = "auto"                # where "torch" trains and where each row's nearest centroid is scored
    #                                     (the same ids on every device); auto: a GPU when torch sees one

    def __post_init__(self):
        if self.targets is None:
            raise RecipeError("image_based: targets is required: a .npy or .parquet of target embeddings from the "
                              "same model (e.g. --set image_based.targets=PATH)")
        if not Path(self.targets).is_file():
            raise RecipeError(f"image_based: targets file {self.targets} does not exist")
        if not 0.0 < self.sample_fraction <= 1.0 or self.clusters < 1 or self.iterations < 1:
            raise RecipeError("image_based: need 0 < sample_fraction <= 1, clusters >= 1, iterations >= 1")
        if self.kmeans not in ("faiss", "torch"):
            raise RecipeError(f"image_based: kmeans is 'faiss' or 'torch', not {self.kmeans!r}")


def fasttext_token_counts(texts: list[str | None]) -> np.ndarray:
    """``len(fasttext.tokenize(text))``: words between fastText's separators, plus one "</s>" per \\n."""
    return np.fromiter((0 if text is None else len(FASTTEXT_WORD.findall(text)) + text.count("\n") for text in texts),
                       dtype=np.int64, count=len(texts))


def caption_checks(table: pa.Table, cfg: ImageBasedConfig) -> list[tuple[str, np.ndarray]]:
    text = table.column("text")
    texts = text.to_pylist()
    languages = np.array(fasttext_top1(texts), dtype=object)
    return [("no_text", is_null(text)), ("not_english", languages != cfg.language),
            ("few_tokens", fasttext_token_counts(texts) <= cfg.min_tokens_exclusive),
            ("too_short", char_lengths(text) <= cfg.min_chars_exclusive)]


def image_column(cfg: ImageBasedConfig) -> str:
    return embedding_columns(cfg.embeddings)[0]


def training_sample(table: pa.Table, cfg: ImageBasedConfig, previous: None = None) -> pa.Table:
    """Partial: the caption-filtered rows with a usable embedding in the uid-hashed sample."""
    if table.num_rows == 0:
        return SAMPLE_SCHEMA.empty_table()
    name = image_column(cfg).rpartition(":")[2]
    _, problems = embedding_matrix(table.column(name), name)
    passed, _ = decide([*caption_checks(table, cfg), *problems], table.num_rows)
    chosen = passed.to_numpy(zero_copy_only=False) & (uid_uniform(table.column("uid"), cfg.seed, "image_based")
                                                      < cfg.sample_fraction)
    rows = table.filter(pa.array(chosen))
    return pa.table({"uid": rows.column("uid"), "image_emb": rows.column(name).cast(pa.binary()),
                     "rows": np.ones(rows.num_rows, dtype=np.int64)}, schema=SAMPLE_SCHEMA)


def load_targets(path: str, dim: int) -> np.ndarray:
    """(n, dim) float32 target embeddings from .npy or .parquet; any non-finite row is an error."""
    source = Path(path)
    if source.suffix == ".npy":
        matrix = np.load(source, allow_pickle=False)
    else:
        import pyarrow.parquet as pq

        column = pq.read_table(source).column(0).combine_chunks()
        if pa.types.is_fixed_size_binary(as_fixed_size(column).type):
            matrix = decode(column)
        else:
            matrix = np.stack(column.to_numpy(zero_copy_only=False))
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim or not len(matrix):
        raise RecipeError(f"image_based: targets {source} have shape {matrix.shape}; expected (n >= 1, {dim}) "
                          f"like the pool's image embeddings")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise RecipeError(f"image_based: targets {source} row {bad[0]} is not finite")
    return matrix


def fit_clusters(merged: pa.Table, cfg: ImageBasedConfig, previous: None = None) -> pa.Table:
    """Finalize: k-means on the sample (in uid order), then flag the targets' nearest centroids."""
    vectors = decode(merged.sort_by("uid").column("image_emb")).astype(np.float32)
    if len(vectors) < cfg.clusters:
        raise RecipeError(f"image_based: {len(vectors)} training embeddings for {cfg.clusters} clusters; lower "
                          f"image_based.clusters or raise image_based.sample_fraction")
    device = kmeans_torch.resolve(cfg.device)
    where = device if cfg.kmeans == "torch" else "cpu (faiss)"
    log_projection(vectors, cfg, where)
    if cfg.kmeans == "torch":
        centroids = kmeans_torch.train(vectors, cfg.clusters, iterations=cfg.iterations, seed=cfg.seed,
                                       spherical=cfg.spherical, device=device)
    else:
        centroids = kmeans.train(vectors, cfg.clusters, iterations=cfg.iterations, seed=cfg.seed, spherical=cfg.spherical,
                                 max_points_per_centroid=max(len(vectors), 1))  # DataComp: no subsampling
    targets = load_targets(cfg.targets, centroids.shape[1])
    target_clusters = np.bincount(kmeans.assign(targets, centroids, device)[0], minlength=cfg.clusters)
    log.info("image_based: %d target embeddings fall in %d of %d clusters", len(targets),
             int((target_clusters > 0).sum()), cfg.clusters)
    return pa.table({"centroid": kmeans.centroid_column(centroids), "targets": pa.array(target_clusters, pa.int64())})


def log_projection(vectors: np.ndarray, cfg: ImageBasedConfig, where: str) -> float:
    """Log (and return) the k-means' expected seconds: n.k.d multiply-adds per iteration, at the rate
    this machine's BLAS scores one block of the sample (an estimate: faiss trains on one thread). Over
    an hour, it says how to cut it: a GPU, a smaller sample (DataComp: 0.3 for large, 0.03 for xlarge),
    or fewer clusters."""
    count, dim = vectors.shape
    block = vectors[:max(1, min(count, (1 << 24) // max(1, min(cfg.clusters, count))))]
    started = time.perf_counter()
    block @ vectors[:min(cfg.clusters, count)].T
    rate = block.size * min(cfg.clusters, count) / max(time.perf_counter() - started, 1e-9)  # multiply-adds/s
    seconds = count * cfg.clusters * dim * cfg.iterations / rate
    log.info("image_based: k-means of %d x %d into %d clusters, %d iterations, on %s: about %s (%.1f Gflop/s here)",
             count, dim, cfg.clusters, cfg.iterations, where, duration(seconds), 2 * rate / 1e9)
    if seconds > 3600 and where.startswith("cpu"):
        log.warning("image_based: that is %s on this CPU. Faster: image_based.kmeans=torch with device=cuda on a "
                    "GPU machine; or image_based.sample_fraction=%g (DataComp uses 0.3 for large and 0.03 for "
                    "xlarge), which trains on fewer rows; or fewer image_based.clusters", duration(seconds),
                    min(cfg.sample_fraction, 0.1))
    return seconds


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def apply(table: pa.Table, cfg: ImageBasedConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("image_based: the clusters were not fitted; run the stage through an engine")
    name = image_column(cfg).rpartition(":")[2]
    vectors, problems = embedding_matrix(table.column(name), name)
    centroids = kmeans.centroid_matrix(artifact)
    usable = ~np.isnan(vectors).any(axis=1) if vectors.shape[1] else np.zeros(table.num_rows, dtype=bool)
    if vectors.shape[1] and vectors.shape[1] != centroids.shape[1]:
        raise RecipeError(f"image_based: {name} has dimension {vectors.shape[1]}, the centroids {centroids.shape[1]}")
    cluster = np.zeros(table.num_rows, dtype=np.int64)
    cluster[usable] = kmeans.assign(vectors[usable], centroids, kmeans_torch.resolve(cfg.device))[0]
    is_target = artifact.column("targets").to_numpy()[cluster] > 0
    checks = [*caption_checks(table, cfg), *problems, ("not_target_cluster", usable & ~is_target)]
    keep, reason = decide(checks, table.num_rows)
    return pa.table({"image_based_keep": keep, "image_based_reason": reason,
                     "image_based_cluster": pa.array(cluster, pa.int32(), mask=~usable)})


def reads(cfg: ImageBasedConfig) -> tuple[str, ...]:
    return ("uid", "text", image_column(cfg))


def check_inputs(cfg: ImageBasedConfig, manifests: dict[str, dict]) -> None:
    check_embeddings("image_based", cfg.embeddings, cfg.model, cfg.random_weights_ok, manifests)


STAGE = Stage(
    name="image_based",
    config=ImageBasedConfig,
    reads=reads,
    adds=pa.schema([("image_based_keep", pa.bool_()), ("image_based_reason", pa.string()),
                    ("image_based_cluster", pa.int32())]),
    apply=apply,
    fit=Fit(passes=(Pass("sample", SAMPLE_SCHEMA, ("uid", "image_emb"), training_sample, fit_clusters),)),
    summary="DataComp image-based: caption filter, then keep images whose k-means cluster is nearest to a target",
    check_inputs=check_inputs,
)
