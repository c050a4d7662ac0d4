"""Spherical k-means helpers shared by the cluster and dbp stages (DESIGN.md 4.3, 4.4).

SemDeDup (Abbas et al. 2023) and DBP (Abbas et al. 2024) cluster L2-normalised embeddings with
faiss' spherical k-means and give each sample its nearest centroid by inner product.

- ``unit_vectors``: an embedding column (float16 bytes, curate.kernels.embeddings) -> float32 unit rows,
  with a per-row reason for rows that cannot be used (no_embedding, non_finite, zero_norm).
  Normalisation is row by row in float64, so a row's vector never depends on its batch.
- ``sample_rate`` / ``in_sample``: the training sample is the rows whose uid-hashed uniform
  (curate.uid.uid_uniform) is below k * max_points_per_centroid / n, so it is the same set on
  every engine and partitioning; the fit sorts it by uid before training.
- ``train``: faiss spherical k-means with a fixed seed, single-threaded while training (OpenMP
  reductions would otherwise make centroids depend on the thread count). k larger than the
  sample is lowered to the sample size (logged; the artifact records the k used).
- ``assign``: nearest centroid (largest dot product, lowest id on ties) and its cosine.
  float32 scores find the candidates within a rounding bound of the best; float64 decides
  among them and gives the similarity, so the result does not depend on batching.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels.embeddings import as_fixed_size, decode
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 23  # rows x centroids scored at once (32 MiB of float32)
REASONS = ("no_embedding", "non_finite", "zero_norm")
NORMALISE_ROWS = 1 << 15  # rows normalised at once (float64 temporaries of 128 MiB at 512-d)


def unit_vectors(columns: list[pa.Array | pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows of embedding columns (see ``normalise``) and an object array of
    reasons (None where usable). Unusable rows are all-NaN."""
    reason = np.full(len(columns[0]), None, dtype=object)
    matrices = []
    for column in columns:
        column = as_fixed_size(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
        missing = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
        matrix = decode(column)
        finite = np.isfinite(matrix).all(axis=1)
        zero = finite & ~(matrix != 0).any(axis=1)
        for name, mask in zip(REASONS, (missing, ~missing & ~finite, ~missing & zero)):
            reason[mask & (reason == None)] = name  # noqa: E711 (elementwise)
        matrices.append(np.where((finite & ~zero)[:, None], matrix, 1))
    vectors = normalise(matrices)
    vectors[reason != None] = np.nan  # noqa: E711
    return vectors, reason


def normalise(matrices: list[np.ndarray]) -> np.ndarray:
    """Rows of each matrix L2-normalised (float64, row by row), concatenated and scaled by
    1/sqrt(parts) so the concatenation is a unit row too; float32 out. Works in row chunks so
    the float64 temporaries stay small."""
    count = len(matrices[0])
    out = np.empty((count, sum(m.shape[1] for m in matrices)), dtype=np.float32)
    for start in range(0, count, NORMALISE_ROWS):
        parts = []
        for matrix in matrices:
            chunk = np.asarray(matrix[start:start + NORMALISE_ROWS], dtype=np.float64)
            parts.append(chunk / np.sqrt(np.einsum("ij,ij->i", chunk, chunk))[:, None])
        vectors = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        out[start:start + NORMALISE_ROWS] = vectors / np.sqrt(len(parts)) if len(parts) > 1 else vectors
    return out


def sample_rate(clusters: int, max_points_per_centroid: int, usable_rows: int) -> float:
    return min(1.0, clusters * max_points_per_centroid / max(usable_rows, 1))


def in_sample(uids: pa.Array | pa.ChunkedArray, rate: float, seed: int, stage: str) -> np.ndarray:
    if rate >= 1.0:
        return np.ones(len(uids), dtype=bool)
    return uid_uniform(uids, seed, stage) < rate


def train(vectors: np.ndarray, clusters: int, *, iterations: int, seed: int, max_points_per_centroid: int,
          stage: str) -> np.ndarray:
    """Spherical k-means centroids (unit rows, float32) of the unit rows ``vectors`` (in uid order)."""
    import faiss

    count, dim = vectors.shape
    if count == 0:
        raise ValueError(f"{stage}: no usable embeddings to cluster (all rows null, non-finite or zero-norm)")
    if count < clusters:
        log.warning("%s: %d training embeddings for %d clusters; using k = %d", stage, count, clusters, count)
        clusters = count
    clustering = faiss.Clustering(dim, clusters)
    clustering.niter, clustering.seed, clustering.spherical = iterations, seed, True
    clustering.max_points_per_centroid = max_points_per_centroid
    clustering.min_points_per_centroid = 1  # a small sample is legal; faiss only warns
    clustering.verbose = False
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # deterministic reductions: same centroids on every engine
    try:
        clustering.train(np.ascontiguousarray(vectors, dtype=np.float32), faiss.IndexFlatIP(dim))
    finally:
        faiss.omp_set_num_threads(threads)
    centroids = faiss.vector_float_to_array(clustering.centroids).reshape(clusters, dim).astype(np.float64)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.where(norms > 0, norms, 1)).astype(np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit row: nearest centroid id (int32; lowest id on exact ties) and cosine (float32).
    Rows must be finite (callers drop unusable rows first)."""
    vectors, centroids = np.asarray(vectors, np.float32), np.asarray(centroids, np.float32)
    ids = np.empty(len(vectors), dtype=np.int32)
    sims = np.empty(len(vectors), dtype=np.float32)
    bound = np.float32(4 * vectors.shape[1] * np.finfo(np.float32).eps)  # unit rows: |error| <= d*u*2
    step = max(1, CHUNK_ELEMENTS // max(1, len(centroids)))
    for start in range(0, len(vectors), step):
        chunk = vectors[start:start + step]
        scores = chunk @ centroids.T
        close = scores >= scores.max(axis=1, keepdims=True) - bound
        rows, candidates = np.nonzero(close)
        exact = np.einsum("ij,ij->i", chunk[rows].astype(np.float64), centroids[candidates].astype(np.float64))
        order = np.lexsort((candidates, -exact, rows))  # per row: largest, then lowest id
        first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
        ids[start:start + len(chunk)] = candidates[first]
        sims[start:start + len(chunk)] = exact[first]
    return ids, sims


def centroid_column(centroids: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(centroids.reshape(-1), pa.float32()), centroids.shape[1])


def centroid_matrix(artifact: pa.Table, column: str = "centroid") -> np.ndarray:
    values = artifact.column(column).combine_chunks()
    return values.flatten().to_numpy().reshape(len(values), values.type.list_size).astype(np.float32)
