"""Embedding validity and normalisation, the one definition every stage uses (DESIGN.md section 6).

A row of an embedding column is unusable for one of three reasons, tested in this order:
``no_embedding`` (null), ``non_finite`` (a NaN or infinite value), ``zero_norm`` (all zeros; no
direction to compare). ``problem_masks`` gives the masks, disjoint by construction; the score,
cluster, dedup, image-based and embed stages all decide with it.

- ``embedding_matrix``: a float16 embedding column -> float32 (n, dim), unusable rows all-NaN;
- ``unit_vectors``: columns -> float32 unit rows, normalised row by row in float64 (so a row's
  vector never depends on its batch), the concatenation of several columns normalised again;
- ``normalise_model_output``: the embed stage's model outputs, L2-normalised in float32.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels.embeddings import as_fixed_size, decode
from curate.kernels.rules import Check, first_failing

REASONS = ("no_embedding", "non_finite", "zero_norm")
NORMALISE_ROWS = 1 << 15  # rows normalised at once (float64 temporaries of 128 MiB at 512-d)


def problem_masks(matrix: np.ndarray, missing: np.ndarray | None = None) -> list[Check]:
    """(reason, mask) for the rows of ``matrix`` that cannot be used; ``missing`` marks null rows."""
    missing = np.zeros(len(matrix), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    finite = np.isfinite(matrix).all(axis=1)
    zero = finite & ~(matrix != 0).any(axis=1)
    return [("no_embedding", missing), ("non_finite", ~missing & ~finite), ("zero_norm", ~missing & zero)]


def _fixed(column: pa.Array | pa.ChunkedArray, name: str) -> pa.Array:
    column = as_fixed_size(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    if not pa.types.is_fixed_size_binary(column.type) or column.type.byte_width % 2:
        raise ValueError(f"{name}: expected float16 embeddings (fixed_size_binary of an even width), got {column.type}")
    return column


def embedding_matrix(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, list[Check]]:
    """float32 (n, dim) of an embedding column and its problem masks; unusable rows are all-NaN."""
    column = _fixed(column, name)
    missing = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
    matrix = decode(column).astype(np.float32)
    problems = problem_masks(matrix, missing)
    for _, mask in problems:
        matrix[mask] = np.nan
    return matrix, problems


def unit_vectors(columns: list[pa.Array | pa.ChunkedArray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows of embedding columns (see ``normalise``) and an object array of reasons
    (None where usable; the first reason of any column). Unusable rows are all-NaN."""
    checks, matrices = [], []
    for column in columns:
        matrix, problems = embedding_matrix(column, "embedding")
        usable = ~np.any([mask for _, mask in problems], axis=0)
        checks += problems
        matrices.append(np.where(usable[:, None], matrix, 1))
    reason = first_failing(sorted(checks, key=lambda check: REASONS.index(check[0])), len(columns[0]))
    vectors = normalise(matrices)
    vectors[reason != None] = np.nan  # noqa: E711 (elementwise on an object array)
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


def normalise_model_output(features: np.ndarray) -> tuple[np.ndarray, list[Check]]:
    """L2-normalise model outputs in float32; rows with NaN/Inf or a zero float32 norm (which tiny
    values reach by underflow) are flagged and left as they are."""
    features = features.astype(np.float32)
    finite = np.isfinite(features).all(axis=1)
    norms = np.sqrt((np.where(finite[:, None], features, 0) ** 2).sum(axis=1))
    usable = finite & (norms > 0)
    features[usable] /= norms[usable, None]
    return features, [("non_finite", ~finite), ("zero_norm", finite & (norms == 0))]


def cosine(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float32 of L2-normalised vectors; NaN where either row is NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        image = image / np.sqrt((image * image).sum(axis=1, dtype=np.float32))[:, None]
        text = text / np.sqrt((text * text).sum(axis=1, dtype=np.float32))[:, None]
        return (image * text).sum(axis=1, dtype=np.float32)
