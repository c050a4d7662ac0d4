"""MetaCLIP's balancing arithmetic (Xu et al. 2023, "Demystifying CLIP Data"; Chuang et al. 2025,
"MetaCLIP 2: A Worldwide Scaling Recipe"), DESIGN.md 4.2 and 4.7. Counts in, probabilities out.

- ``entry_counts``: per entry, the texts of a batch whose match set holds it (the counting pass);
- ``sampling_probabilities``: p[e] = min(1, t / count[e]);
- ``keep_probability``: per text with match set M, 1 - prod over e in M of (1 - p[e]);
- ``tail_proportion`` (MetaCLIP 2's t -> p): the share of all matches that fall on entries with
  count < t;
- ``threshold_for_tail`` (MetaCLIP 2's p -> t): the count at which the ascending cumulative share
  of the counts comes nearest to p (first such count on ties), at least 1. Entries with count 0
  take part as they do in the reference (they add nothing to the cumulative share);
  ``nearest_count_for_tail`` is the same count before the floor of 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def sampling_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p[e] = min(1, t / count[e]); an entry nothing matches gets 1 (it is never used)."""
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, t / np.asarray(counts).astype(np.float64))


def keep_probability(matches: pa.Array, p: np.ndarray) -> np.ndarray:
    """Per text, 1 - prod over its entries of (1 - p[e]); 0 for a text with no match (or null)."""
    offsets = matches.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    q = 1.0 - p[matches.flatten().to_numpy()]
    lengths = np.diff(offsets)
    keep_none = np.ones(len(matches), dtype=np.float64)  # probability that no entry keeps the text
    nonempty = lengths > 0
    if q.size:
        keep_none[nonempty] = np.multiply.reduceat(q, offsets[:-1][nonempty])
    return 1.0 - keep_none


def tail_proportion(counts: np.ndarray, t: float) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total else 0.0


def nearest_count_for_tail(counts: np.ndarray, p: float) -> int:
    """The reference's p_to_t as it stands: may be 0 (the nearest share falls on unmatched entries)."""
    ordered = np.sort(np.asarray(counts, dtype=np.int64))
    total = ordered.sum()
    if total == 0:
        return 1
    share = np.cumsum(ordered) / total
    return int(ordered[int(np.abs(share - p).argmin())])


def threshold_for_tail(counts: np.ndarray, p: float) -> int:
    return max(1, nearest_count_for_tail(counts, p))


def entry_counts(matches: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(entry ids, texts matching each) over a list<int> column of match sets: the counting pass."""
    ids = matches.flatten().to_numpy() if len(matches) else []
    counts = np.bincount(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    matched = np.flatnonzero(counts)
    return matched.astype(np.int64), counts[matched].astype(np.int64)
