"""Small pure kernels shared by the caption and size filters (DataComp basic, ALIGN, LAION-2B).

The rules come from DataComp (Gadre et al. 2023, mlfoundations/datacomp ``baselines/``) and
ALIGN (Jia et al. 2021); see DESIGN.md sections 4.1 and 4.6. Definitions, checkable by hand:

- words: exactly Python's ``len(text.split())``, so every character for which
  ``str.isspace()`` holds separates words ("\\u3000", "\\xa0", "\\x1c", "\\u2028", ...);
- characters: ``len(text)``, in code points (``pc.utf8_length`` on valid UTF-8);
- size: ``min(w, h) >= min_side and max(w, h) / min(w, h) <= max_aspect``. The ratio is a
  float64 division, as DataComp's pandas code computes it, so 600 x 200 (exactly 3.0)
  passes and 603 x 200 (3.015) fails. A null, zero or negative side cannot be measured and
  fails as ``no_size``, before ``too_small`` and ``aspect_ratio``;
- text key: the first 8 bytes of blake2b(digest_size=8) of the UTF-8 caption, read as a
  little-endian signed int64 (Spark has no uint64). Identical captions (case and
  whitespace included) share a key; null has none.

A check is a (reason, failed-mask) pair; a stage lists its checks in a fixed order and
``decide`` turns them into a keep flag and the first failing reason (null when kept).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import RowError

Check = tuple[str, np.ndarray]


def word_counts(texts: list[str | None]) -> np.ndarray:
    """``len(text.split())`` per text; a null text counts 0 words (stages test null first)."""
    return np.fromiter((0 if text is None else len(text.split()) for text in texts), dtype=np.int64, count=len(texts))


def char_lengths(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``len(text)`` in code points per text; a null text has length 0."""
    return np.asarray(pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def is_null(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)


def size_checks(widths: pa.Array | pa.ChunkedArray, heights: pa.Array | pa.ChunkedArray,
                min_side: int, max_aspect: float) -> list[Check]:
    """no_size, too_small, aspect_ratio masks for the rule min side >= min_side, ratio <= max_aspect."""
    width, height = _as_float(widths), _as_float(heights)
    short, long = np.fmin(width, height), np.fmax(width, height)
    no_size = ~((width > 0) & (height > 0))  # NaN (null) compares False
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = long / short
    return [("no_size", no_size),
            ("too_small", ~no_size & (short < min_side)),
            ("aspect_ratio", ~no_size & (ratio > max_aspect))]


def _as_float(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def text_keys(texts: list[str | None]) -> pa.Array:
    """A stable int64 key per caption (blake2b-64 of its UTF-8, little-endian signed); null -> null."""
    digests = b"".join(b"\x00" * 8 if text is None else
                       hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                       for text in texts)
    keys = np.frombuffer(digests, dtype="<i8").astype(np.int64)
    return pa.array(keys, pa.int64(), mask=np.fromiter((t is None for t in texts), dtype=bool, count=len(texts)))


def first_failing(checks: list[Check], rows: int) -> np.ndarray:
    """Per row, the name of the first check that failed, or None; an object array."""
    reasons = np.full(rows, None, dtype=object)
    for name, failed in reversed(checks):
        reasons[np.asarray(failed, dtype=bool)] = name
    return reasons


def decide(checks: list[Check], rows: int) -> tuple[pa.Array, pa.Array]:
    """(keep, reason) columns: keep iff no check failed; reason = the first failure, else null."""
    failed = np.zeros(rows, dtype=bool)
    for _, mask in checks:
        failed |= np.asarray(mask, dtype=bool)
    return pa.array(~failed, pa.bool_()), pa.array(first_failing(checks, rows), pa.string())


def float_values(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """A numeric column as float64 (null -> NaN). A string column whose values all parse as numbers
    is read too; the first value that does not is a ``RowError`` naming its row and the value."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_null(column.type):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise RowError(f"column {name!r} has type {column.type}; expected numbers")
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except pa.ArrowInvalid:
        for row, value in enumerate(column.to_pylist()):
            try:
                float(value) if value is not None else None
            except ValueError:
                raise RowError(f"column {name!r} holds {value!r}, not a number", row=row) from None
        raise
