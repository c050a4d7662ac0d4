"""Spherical k-means clusters of the pool's embeddings, the first step of SemDeDup (Abbas et al.
2023, "SemDeDup: Data-efficient learning at web-scale through semantic deduplication"),
DESIGN.md 4.3.

Embeddings (image by default; text, or the concatenation of both, selectable) are
L2-normalised (the concatenation of the normalised halves, normalised again). The fit is two
passes of the stage contract:

1. count the usable rows n (one row of null keys whose ``rows`` column sums the counts);
2. collect the uid-hashed sample of rate k * max_points_per_centroid / n (keyed by uid and the
   raw float16 embedding bytes (image then text for concat), so the engines' merge is an
   identity), then finalize sorts it by uid
   and trains faiss' spherical k-means (fixed seed, one thread; curate.kernels.kmeans). faiss would
   subsample to max_points_per_centroid per centroid itself; sampling by uid first keeps the
   merged sample small and the same on every engine.

The artifact (OUT/cluster/_artifact.parquet) is the centroids: ``centroid_id`` (int32),
``centroid`` (fixed_size_list<float32>, unit rows), ``usable_rows``. Assignment is per batch:
``cluster_id`` (int32, largest dot product, lowest id on ties) and ``cluster_sim`` (float32,
cosine to that centroid), so it streams over the pool with memory bounded by a shard.
Rows without a usable embedding get null id and sim and ``cluster_reason`` = no_embedding,
non_finite or zero_norm; they are excluded before clustering. k larger than the sample is
lowered to the sample size (logged); the number of centroids in the artifact is the k used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels import kmeans
from curate.kernels.embeddings import decode, embedding_columns
from curate.contract import Fit, RecipeError, Stage

MODALITIES = ("image", "text", "concat")
SAMPLE_SCHEMA = pa.schema([("uid", pa.string()), ("vector", pa.binary()), ("rows", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    # Defaults: SemDeDup (Abbas et al. 2023): spherical k-means of the image embeddings,
    # k = 50,000 for LAION-440M; scale k with the pool (about n / 10,000 or more).
    embeddings: str = "b32"               # pool sidecar name, or "embed" (this run's embed stage)
    modality: str = "image"               # image | text | concat
    clusters: int = 50_000
    iterations: int = 25                  # Lloyd iterations (faiss' default niter)
    max_points_per_centroid: int = 256    # training sample = k * this (faiss' default)
    seed: int = 0                         # k-means seed and uid-hash seed

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise RecipeError(f"cluster: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.clusters < 1 or self.iterations < 1 or self.max_points_per_centroid < 1:
            raise RecipeError("cluster: clusters, iterations and max_points_per_centroid must be >= 1")


def vector_specs(embeddings: str, modality: str) -> tuple[str, ...]:
    """The column specs the embedding of a modality is made from."""
    image, text = embedding_columns(embeddings)
    return {"image": (image,), "text": (text,), "concat": (image, text)}[modality]


def vector_names(embeddings: str, modality: str) -> list[str]:
    return [spec.rpartition(":")[2] for spec in vector_specs(embeddings, modality)]


def unit_rows(table: pa.Table, embeddings: str, modality: str) -> tuple[np.ndarray, np.ndarray]:
    return kmeans.unit_vectors([table.column(name) for name in vector_names(embeddings, modality)])


def sample_partial(table: pa.Table, cfg, previous: pa.Table | None, stage: str) -> pa.Table:
    """Pass 1 (previous None): the usable-row count as one row of null keys. Pass 2: the sample."""
    names = vector_names(cfg.embeddings, cfg.modality)
    _, reason = unit_rows(table, cfg.embeddings, cfg.modality) if table.num_rows else (None, np.empty(0, object))
    usable = reason == None  # noqa: E711
    if previous is None:
        return pa.table({"uid": [None], "vector": [None], "rows": [int(usable.sum())]}, schema=SAMPLE_SCHEMA)
    rate = kmeans.sample_rate(cfg.clusters, cfg.max_points_per_centroid, previous.column("usable_rows")[0].as_py())
    chosen = usable & kmeans.in_sample(table.column("uid"), rate, cfg.seed, stage) if table.num_rows else usable
    rows = table.filter(pa.array(chosen, pa.bool_()))
    raw = [rows.column(n).combine_chunks().cast(pa.binary()) for n in names]
    vector = raw[0] if len(raw) == 1 else pc.binary_join_element_wise(*raw, b"")
    return pa.table({"uid": rows.column("uid"), "vector": vector, "rows": np.ones(rows.num_rows, dtype=np.int64)},
                    schema=SAMPLE_SCHEMA)


def train_centroids(merged: pa.Table, cfg, previous: pa.Table | None, stage: str) -> tuple[np.ndarray, int]:
    """Finalize: pass 1 -> (None, n); pass 2 -> (centroids of the uid-sorted sample, n)."""
    if previous is None:
        counts = merged.filter(merged.column("uid").is_null()).column("rows").to_pylist()
        return None, int(sum(counts))
    sample = merged.filter(merged.column("uid").is_valid()).sort_by("uid")
    raw = decode(sample.column("vector"))
    vectors = kmeans.normalise(np.split(raw, len(vector_names(cfg.embeddings, cfg.modality)), axis=1))
    centroids = kmeans.train(vectors, cfg.clusters, iterations=cfg.iterations, seed=cfg.seed,
                             max_points_per_centroid=cfg.max_points_per_centroid, stage=stage)
    return centroids, previous.column("usable_rows")[0].as_py()


def finalize(merged: pa.Table, cfg: ClusterConfig, previous: pa.Table | None) -> pa.Table:
    centroids, usable_rows = train_centroids(merged, cfg, previous, "cluster")
    if centroids is None:
        return pa.table({"usable_rows": [usable_rows]})
    return pa.table({"centroid_id": pa.array(np.arange(len(centroids)), pa.int32()),
                     "centroid": kmeans.centroid_column(centroids),
                     "usable_rows": pa.array(np.full(len(centroids), usable_rows), pa.int64())})


def assign_rows(table: pa.Table, embeddings: str, modality: str, centroids: np.ndarray):
    """(ids int32 array with nulls, sims float32 array with nulls, reasons) for a batch."""
    vectors, reason = unit_rows(table, embeddings, modality)
    usable = reason == None  # noqa: E711
    if usable.any() and vectors.shape[1] != centroids.shape[1]:
        raise ValueError(f"embeddings of dimension {vectors.shape[1]}, centroids of {centroids.shape[1]}")
    ids = np.zeros(table.num_rows, dtype=np.int32)
    sims = np.zeros(table.num_rows, dtype=np.float32)
    ids[usable], sims[usable] = kmeans.assign(vectors[usable], centroids)
    return (pa.array(ids, pa.int32(), mask=~usable), pa.array(sims, pa.float32(), mask=~usable),
            pa.array(reason, pa.string()), vectors)


def apply(table: pa.Table, cfg: ClusterConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("cluster: the centroids were not fitted; run the stage through an engine")
    ids, sims, reason, _ = assign_rows(table, cfg.embeddings, cfg.modality, kmeans.centroid_matrix(artifact))
    return pa.table({"cluster_id": ids, "cluster_sim": sims, "cluster_reason": reason})


STAGE = Stage(
    name="cluster",
    config=ClusterConfig,
    reads=lambda cfg: ("uid", *vector_specs(cfg.embeddings, cfg.modality)),
    adds=pa.schema([("cluster_id", pa.int32()), ("cluster_sim", pa.float32()), ("cluster_reason", pa.string())]),
    apply=apply,
    fit=Fit(partial=lambda table, cfg, previous: sample_partial(table, cfg, previous, "cluster"),
            keys=("uid", "vector"), finalize=finalize, passes=2),
    summary="SemDeDup step 1: spherical k-means (faiss) of L2-normalised embeddings; cluster_id, cluster_sim",
)
