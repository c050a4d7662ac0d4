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

from curate.contract import Fit, Pass, Stage
from curate.errors import RecipeError
from curate.kernels import kmeans
from curate.kernels.embeddings import MODALITIES, check_embeddings, vector_names, vector_specs
from curate.kernels.vectors import unit_vectors

COUNT_SCHEMA = pa.schema([("rows", pa.int64()), ("usable", pa.int64())])


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
    random_weights_ok: bool = False     # accept embeddings made with random weights (recipe: random_weights)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise RecipeError(f"cluster: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.clusters < 1 or self.iterations < 1 or self.max_points_per_centroid < 1:
            raise RecipeError("cluster: clusters, iterations and max_points_per_centroid must be >= 1")


def unit_rows(table: pa.Table, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray]:
    return unit_vectors([table.column(name) for name in vector_names(cfg.embeddings, cfg.modality)])


def count_usable(table: pa.Table, cfg: ClusterConfig, previous: None) -> pa.Table:
    """Pass ``count``: rows, and rows with a usable embedding."""
    usable = unit_rows(table, cfg)[1] == None if table.num_rows else np.zeros(0, bool)  # noqa: E711
    return pa.table({"rows": [table.num_rows], "usable": [int(usable.sum())]}, schema=COUNT_SCHEMA)


def usable_rows(merged: pa.Table, cfg: ClusterConfig, previous: None) -> pa.Table:
    sums = merged.to_pylist()[0] if merged.num_rows else {}
    return pa.table({"usable_rows": [int(sums.get("usable") or 0)], "rows": [int(sums.get("rows") or 0)]})


def sample_partial(table: pa.Table, cfg: ClusterConfig, previous: pa.Table) -> pa.Table:
    """Pass ``sample``: the usable rows whose uid-hashed uniform is below k * max_points / n."""
    if table.num_rows == 0:
        return kmeans.SAMPLE_SCHEMA.empty_table()
    usable = unit_rows(table, cfg)[1] == None  # noqa: E711
    rate = kmeans.sample_rate(cfg.clusters, cfg.max_points_per_centroid, previous.column("usable_rows")[0].as_py())
    chosen = usable & kmeans.in_sample(table.column("uid"), rate, cfg.seed, "cluster")
    return kmeans.sample_table(table.filter(pa.array(chosen, pa.bool_())), vector_names(cfg.embeddings, cfg.modality))


def train_centroids(merged: pa.Table, cfg: ClusterConfig, previous: pa.Table) -> pa.Table:
    """Finalize ``sample``: spherical k-means of the uid-sorted sample; the centroids are the artifact."""
    vectors = kmeans.sample_vectors(merged, len(vector_names(cfg.embeddings, cfg.modality)))
    centroids = kmeans.fit_clusters(vectors, cfg.clusters, iterations=cfg.iterations, seed=cfg.seed,
                                    max_points_per_centroid=cfg.max_points_per_centroid, stage="cluster",
                                    rows=previous.column("rows")[0].as_py())
    return pa.table({"centroid_id": pa.array(np.arange(len(centroids)), pa.int32()),
                     "centroid": kmeans.centroid_column(centroids),
                     "usable_rows": pa.array(np.full(len(centroids), previous.column("usable_rows")[0].as_py()),
                                             pa.int64())})


def assign_rows(table: pa.Table, cfg: ClusterConfig, centroids: np.ndarray):
    """(ids int32 array with nulls, sims float32 array with nulls, reasons) for a batch."""
    vectors, reason = unit_rows(table, cfg)
    usable = reason == None  # noqa: E711
    if usable.any() and vectors.shape[1] != centroids.shape[1]:
        raise RecipeError(f"cluster: embeddings of dimension {vectors.shape[1]}, centroids of {centroids.shape[1]}")
    ids = np.zeros(table.num_rows, dtype=np.int32)
    sims = np.zeros(table.num_rows, dtype=np.float32)
    ids[usable], sims[usable] = kmeans.assign(vectors[usable], centroids)
    return pa.array(ids, pa.int32(), mask=~usable), pa.array(sims, pa.float32(), mask=~usable), pa.array(reason, pa.string())


def apply(table: pa.Table, cfg: ClusterConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("cluster: the centroids were not fitted; run the stage through an engine")
    ids, sims, reason = assign_rows(table, cfg, kmeans.centroid_matrix(artifact))
    return pa.table({"cluster_id": ids, "cluster_sim": sims, "cluster_reason": reason})


def reads(cfg: ClusterConfig) -> tuple[str, ...]:
    return ("uid", *vector_specs(cfg.embeddings, cfg.modality))


def check_inputs(cfg: ClusterConfig, manifests: dict[str, dict]) -> None:
    check_embeddings("cluster", cfg.embeddings, None, cfg.random_weights_ok, manifests)


STAGE = Stage(
    name="cluster",
    config=ClusterConfig,
    reads=reads,
    adds=pa.schema([("cluster_id", pa.int32()), ("cluster_sim", pa.float32()), ("cluster_reason", pa.string())]),
    apply=apply,
    fit=Fit(passes=(Pass("count", COUNT_SCHEMA, (), count_usable, usable_rows),
                    Pass("sample", kmeans.SAMPLE_SCHEMA, ("uid", "vector"), sample_partial, train_centroids))),
    summary="SemDeDup step 1: spherical k-means (faiss) of L2-normalised embeddings; cluster_id, cluster_sim",
    check_inputs=check_inputs,
)
