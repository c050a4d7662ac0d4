"""k-means, the one implementation the cluster, dbp and image_based stages use (DESIGN.md 4.1, 4.3, 4.4).

SemDeDup (Abbas et al. 2023) and DBP (Abbas et al. 2024) cluster L2-normalised embeddings with
faiss' spherical k-means; DataComp's image-based baseline (Gadre et al. 2023) runs faiss' plain L2
k-means. Each sample then gets its nearest centroid by inner product.

- ``sample_rate`` / ``in_sample``: a training sample is the rows whose uid-hashed uniform
  (curate.uid.uid_uniform) is below a rate, so it is the same set on every engine and
  partitioning; ``sample_table`` carries a sample through a fit (uid + raw embedding bytes, so
  the engines' merge is an identity) and ``sample_vectors`` reads it back in uid order.
- ``train``: faiss k-means with a fixed seed, single-threaded while training (OpenMP reductions
  would otherwise make centroids depend on the thread count), raw centroids out (spherical
  callers normalise them: ``unit_centroids``). ``fit_clusters`` lowers k to the sample size.
- ``assign``: nearest centroid (largest dot product, lowest id on exact ties) and the dot
  product. float32 scores find the candidates within a rounding bound of the best; float64
  decides among them and gives the value, so the result does not depend on batching.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels.embeddings import decode
from curate.kernels.vectors import normalise
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 23  # rows x centroids scored at once (32 MiB of float32)
SAMPLE_SCHEMA = pa.schema([("uid", pa.string()), ("vector", pa.binary()), ("rows", pa.int64())])


def sample_rate(clusters: int, max_points_per_centroid: int, usable_rows: int) -> float:
    return min(1.0, clusters * max_points_per_centroid / max(usable_rows, 1))


def in_sample(uids: pa.Array | pa.ChunkedArray, rate: float, seed: int, stage: str) -> np.ndarray:
    if rate >= 1.0:
        return np.ones(len(uids), dtype=bool)
    return uid_uniform(uids, seed, stage) < rate


def sample_table(rows: pa.Table, columns: list[str]) -> pa.Table:
    """A fit partial carrying sampled rows: uid, the raw embedding bytes (columns joined), rows=1."""
    raw = [rows.column(name).combine_chunks().cast(pa.binary()) for name in columns]
    vector = raw[0] if len(raw) == 1 else pc.binary_join_element_wise(*raw, b"")
    return pa.table({"uid": rows.column("uid"), "vector": vector, "rows": np.ones(rows.num_rows, dtype=np.int64)},
                    schema=SAMPLE_SCHEMA)


def sample_vectors(merged: pa.Table, parts: int) -> np.ndarray:
    """The merged sample in uid order as float32 unit rows (``parts`` joined embeddings each normalised)."""
    sample = merged.sort_by("uid")
    return normalise(np.split(decode(sample.column("vector")), parts, axis=1))


def train(vectors: np.ndarray, clusters: int, *, iterations: int, seed: int, spherical: bool,
          max_points_per_centroid: int) -> np.ndarray:
    """faiss k-means centroids (float32, as faiss leaves them) of ``vectors`` (in a fixed order)."""
    import faiss

    count, dim = vectors.shape
    clustering = faiss.Clustering(dim, clusters)
    clustering.niter, clustering.seed, clustering.spherical = iterations, seed, spherical
    clustering.max_points_per_centroid = max_points_per_centroid
    clustering.min_points_per_centroid = 1  # a small sample is legal; faiss only warns
    clustering.verbose = False
    index = faiss.IndexFlatIP(dim) if spherical else faiss.IndexFlatL2(dim)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # deterministic reductions: same centroids on every engine
    try:
        clustering.train(np.ascontiguousarray(vectors, dtype=np.float32), index)
    finally:
        faiss.omp_set_num_threads(threads)
    return faiss.vector_float_to_array(clustering.centroids).reshape(clusters, dim)


def unit_centroids(centroids: np.ndarray) -> np.ndarray:
    centroids = centroids.astype(np.float64)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.where(norms > 0, norms, 1)).astype(np.float32)


def fit_clusters(vectors: np.ndarray, clusters: int, *, iterations: int, seed: int, max_points_per_centroid: int,
                 stage: str, rows: int) -> np.ndarray:
    """Spherical k-means unit centroids of unit rows; k above the sample size is lowered (logged).
    An empty pool (``rows`` 0) has no centroids; rows without one usable embedding are an error."""
    if len(vectors) == 0 and rows == 0:
        log.warning("%s: the pool has no rows; no clusters", stage)
        return np.zeros((0, max(1, vectors.shape[1] if vectors.ndim == 2 else 1)), dtype=np.float32)  # Arrow: size >= 1
    if len(vectors) == 0:
        raise ValueError(f"{stage}: no usable embeddings to cluster among {rows} rows (all null, non-finite or zero-norm)")
    if len(vectors) < clusters:
        log.warning("%s: %d training embeddings for %d clusters; using k = %d", stage, len(vectors), clusters,
                    len(vectors))
        clusters = len(vectors)
    return unit_centroids(train(vectors, clusters, iterations=iterations, seed=seed, spherical=True,
                                max_points_per_centroid=max_points_per_centroid))


def assign(vectors: np.ndarray, centroids: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per row: nearest centroid id (int32; largest dot product, lowest id on exact ties) and the
    dot product (float32). Rows must be finite (callers drop unusable rows first). ``device``: where
    the float32 scores are computed ("cpu": numpy; a torch device such as "cuda": curate.kernels.kmeans_torch);
    the float64 decision is the same on every device, and so are the results."""
    vectors, centroids = np.asarray(vectors, np.float32), np.asarray(centroids, np.float32)
    ids = np.empty(len(vectors), dtype=np.int32)
    sims = np.empty(len(vectors), dtype=np.float32)
    # |float32 dot - exact| <= d * eps * |v| * |c| per score; twice that between two scores
    scale = 4 * vectors.shape[1] * np.finfo(np.float32).eps * max(1.0, float(np.linalg.norm(centroids, axis=1).max(initial=0)))
    if device == "cpu":
        step, candidates_of = max(1, CHUNK_ELEMENTS // max(1, len(centroids))), lambda chunk: _candidates(chunk, centroids, scale)
    else:
        from curate.kernels.kmeans_torch import Candidates

        candidates_of = Candidates(centroids, scale, device)
        step = candidates_of.step
    for start in range(0, len(vectors), step):
        chunk = vectors[start:start + step]
        rows, candidates = candidates_of(chunk)
        exact = np.einsum("ij,ij->i", chunk[rows].astype(np.float64), centroids[candidates].astype(np.float64))
        order = np.lexsort((candidates, -exact, rows))  # per row: largest, then lowest id
        first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
        ids[start:start + len(chunk)] = candidates[first]
        sims[start:start + len(chunk)] = exact[first]
    return ids, sims


def _candidates(chunk: np.ndarray, centroids: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The (row, centroid) pairs whose float32 score is within the rounding bound of the row's best."""
    scores = chunk @ centroids.T
    bound = (scale * np.maximum(1.0, np.linalg.norm(chunk, axis=1))).astype(np.float32)[:, None]
    return np.nonzero(scores >= scores.max(axis=1, keepdims=True) - bound)


def centroid_column(centroids: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(centroids.reshape(-1), pa.float32()), centroids.shape[1])


def centroid_matrix(artifact: pa.Table, column: str = "centroid") -> np.ndarray:
    values = artifact.column(column).combine_chunks()
    return values.flatten().to_numpy().reshape(len(values), values.type.list_size).astype(np.float32)
