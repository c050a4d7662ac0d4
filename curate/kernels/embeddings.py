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

The ``embed`` stage (curate/embed.py) writes the same bytes as ``embed_image``/``embed_text``
in plain ``binary`` columns (one width per column; Spark writes BINARY either way), which
``decode`` reads the same way. Model facts sit at the top level of both kinds of manifest:
``model`` (open_clip name or hf-hub:/local-dir: id), ``pretrained`` (tag, checkpoint path or
None), ``dim``, ``preprocess``; an embed manifest adds ``weights`` (random | tag | file | hf-hub |
local-dir) and ``checkpoint_sha256``. ``embedding_model(manifest)`` reads the model name.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import RecipeError

EMBEDDINGS_DIR = "embeddings"
MODALITIES = ("image", "text", "concat")


def embedding_model(manifest: dict) -> str | None:
    """The open_clip model named by an embedding manifest (an imported sidecar's or the embed
    stage's), or None when it names none."""
    return manifest.get("model") or (manifest.get("config") or {}).get("model")


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


def embedding_columns(source: str) -> tuple[str, str]:
    """The (image, text) column specs a stage reads for an embedding source: "embed" is this
    run's embed stage (``embed_image``, ``embed_text``); any other name is the pool sidecar
    ``embeddings/<name>`` (e.g. "b32" -> ``embeddings/b32:image_emb``, ``embeddings/b32:text_emb``)."""
    if source == "embed":
        return "embed_image", "embed_text"
    return f"{sidecar_path(source)}:image_emb", f"{sidecar_path(source)}:text_emb"


def vector_specs(embeddings: str, modality: str) -> tuple[str, ...]:
    """The column specs a modality's vector is made from: image, text, or both (concat)."""
    image, text = embedding_columns(embeddings)
    return {"image": (image,), "text": (text,), "concat": (image, text)}[modality]


def vector_names(embeddings: str, modality: str) -> list[str]:
    """The column names ``apply`` sees for ``vector_specs``."""
    return [spec.rpartition(":")[2] for spec in vector_specs(embeddings, modality)]


def source_key(source: str) -> str:
    """Where the engines file a source's manifest: the stage name, or "pool:<sidecar dir>"."""
    return source if source == "embed" else f"pool:{sidecar_path(source)}"


def check_embeddings(stage: str, source: str, model: str | None, random_ok: bool, manifests: dict[str, dict]) -> None:
    """Refuse embeddings made with random weights (unless ``random_ok``: the recipe's
    ``random_weights: true``) and embeddings of another model than the recipe names (``model``;
    None: any model). An imported sidecar's manifest has ``model``; the embed stage's has it and
    ``weights`` (random | tag | file | hf-hub | local-dir) at the top level."""
    manifest = manifests.get(source_key(source)) or {}
    if manifest.get("weights") == "random" and not random_ok:
        raise RecipeError(f"{stage}: the {source!r} embeddings were made with random weights (pretrained: random); "
                          f"they carry no meaning. Embed with trained weights, or set random_weights: true in the "
                          f"recipe to use them anyway (pipeline tests, speed measurements)")
    if model is None:
        return
    recorded = embedding_model(manifest)
    if recorded is None:
        raise RecipeError(f"{stage}: the recipe names model {model!r}, but the {source!r} embeddings' manifest "
                          f"records no model; drop {stage}.model or recompute the embeddings")
    if recorded != model:
        raise RecipeError(f"{stage}: the recipe names model {model!r}, but the {source!r} embeddings were made "
                          f"by {recorded!r} (pretrained {manifest.get('pretrained')!r}); use embeddings of {model!r}")


def as_fixed_size(column: pa.Array) -> pa.Array:
    """A binary column whose non-null values all have one width -> fixed_size_binary (Spark hands
    fixed_size_binary parquet columns to Python as plain binary). Unequal widths are an error."""
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return column
    lengths = pc.binary_length(column).drop_null()
    widths = pc.unique(lengths).to_pylist()
    if len(widths) > 1:
        first_other = pc.index(pc.binary_length(column), widths[1]).as_py()
        raise ValueError(f"embeddings of different widths in one column: {widths[0]} and {widths[1]} bytes "
                         f"(row {first_other} of this batch)")
    return column.cast(pa.binary(widths[0] if widths else 0))


def decode(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """fixed_size_binary(2 * dim) -> float16 array (n, dim); null rows are NaN. A plain binary
    column with one width (how Spark passes these columns) is read the same way."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    column = as_fixed_size(column)
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
