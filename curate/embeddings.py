"""Embedding sidecars: uid-keyed parquet beside the pool, one file per pool shard.

An embedding set lives in POOL/embeddings/<name>/part-NNNNN.parquet, row-aligned with pool
shard NNNNN (local layout) or uid-joined (Spark layout), with columns ``uid``, ``image_emb``,
``text_emb``, and a ``_manifest.json`` naming the model, its pretrained source, the
dimension and the preprocessing, so a stage can refuse embeddings from another model.

Storage: float16, L2-normalised, as ``fixed_size_binary(2 * dim)`` holding the little-endian
float16 values. Decision: not ``fixed_size_list<halffloat>``, because Spark (4.x) can read
neither parquet FLOAT16 nor Arrow halffloat; raw float16 bytes cost the same space, read
on every engine, and ``decode`` turns a column into an (n, dim) array without copying
per row. A null entry (e.g. an image that failed to decode) decodes to a row of NaN.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EMBEDDINGS_DIR = "embeddings"


def sidecar_path(name: str) -> str:
    """The sidecar's directory relative to the pool."""
    return f"{EMBEDDINGS_DIR}/{name}"


def encode(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeBinaryArray:
    """(n, dim) floats -> fixed_size_binary(2 * dim) of little-endian float16; rows where
    ``valid`` is False become null."""
    matrix = np.ascontiguousarray(matrix, dtype="<f2")
    width = 2 * matrix.shape[1]
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    buffer = pa.py_buffer(matrix.tobytes())
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(matrix), [None, buffer])
    return array if mask is None else pc.if_else(mask, pa.scalar(None, pa.binary(width)), array)


def decode(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """fixed_size_binary(2 * dim) -> float16 array (n, dim); null rows are NaN."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_fixed_size_binary(column.type):
        raise TypeError(f"expected fixed_size_binary embeddings, got {column.type}")
    dim = column.type.byte_width // 2
    if len(column) == 0:
        return np.empty((0, dim), dtype=np.float16)
    data = np.frombuffer(column.buffers()[1], dtype="<f2")
    matrix = data[column.offset * dim:(column.offset + len(column)) * dim].reshape(len(column), dim).copy()
    if column.null_count:
        matrix[np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return matrix
