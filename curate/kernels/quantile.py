"""Exact order statistics of float32 values with memory independent of their number: radix
selection over order-preserving integer keys (the score stage's exact global fraction, DESIGN.md 4.1).

Each float32 maps to a uint32 key in the same order (-0.0 counted as 0.0, as ``>=`` does); a
histogram of the top 16 key bits finds the bucket holding a given descending rank, a histogram of
the low 16 bits inside that bucket finds the exact key, hence the exact value. Histograms have at
most 65,536 rows whatever the number of values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

BUCKET_BITS = 16
LOW_MASK = (1 << BUCKET_BITS) - 1
HISTOGRAM = pa.schema([("bin", pa.int64()), ("rows", pa.int64())])


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


def find_rank(bins: np.ndarray, rows: np.ndarray, rank: int) -> tuple[int, int, int]:
    """In a histogram, the bin holding descending rank ``rank`` (0-based), the rank inside it,
    and the rows in higher bins."""
    order = np.argsort(-bins, kind="stable")
    bins, cumulative = bins[order], np.cumsum(rows[order])
    position = int(np.searchsorted(cumulative, rank, side="right"))
    above = int(cumulative[position - 1]) if position else 0
    return int(bins[position]), rank - above, above
