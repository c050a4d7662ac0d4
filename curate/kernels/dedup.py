"""SemDeDup's within-cluster rule (Abbas et al. 2023), DESIGN.md 4.3, on the members of one cluster
in their dedup order (unit rows), without ever holding the n x n similarity matrix: blocks of rows
against all the rows they are compared with (a block holds at most ``BLOCK_ELEMENTS`` floats).

- ``first_duplicates``: per member, the position of the earliest earlier member with cosine
  > 1 - eps, or -1 (kept): the paper's rule exactly (compared in float32);
- ``neighbour_similarities``: per member, the largest cosine to any EARLIER member (what the rule
  thresholds: a member is removed at eps iff this is > 1 - eps) and to any OTHER member (its
  nearest neighbour, whose distance measures how densely the embedding space packs distinct
  samples): what eps calibration is computed from.
"""

from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 1 << 24  # similarities computed at once (64 MiB of float32)


def first_duplicates(vectors: np.ndarray, eps: float) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, threshold = len(vectors), np.float32(1.0 - eps)
    first = np.full(count, -1, dtype=np.int64)
    block = max(1, BLOCK_ELEMENTS // max(count, 1))
    for start in range(0, count, block):
        stop = min(count, start + block)
        sims = vectors[start:stop] @ vectors[:stop].T  # block rows x all members up to the block's end
        sims[:, start:] = np.where(np.tri(stop - start, k=-1, dtype=bool), sims[:, start:], -np.inf)  # earlier only
        hits = sims > threshold
        found = hits.any(axis=1)
        first[start:stop][found] = hits[found].argmax(axis=1)
    return first


def neighbour_similarities(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest cosine to an earlier member, largest cosine to any other member), float32; -inf
    where there is none (the first member; a cluster of one)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    earlier = np.full(count, -np.inf, dtype=np.float32)
    nearest = np.full(count, -np.inf, dtype=np.float32)
    block = max(1, BLOCK_ELEMENTS // max(count, 1))
    for start in range(0, count, block):
        stop = min(count, start + block)
        sims = vectors[start:stop] @ vectors.T
        rows = np.arange(stop - start)
        sims[rows, start + rows] = -np.inf  # not itself
        nearest[start:stop] = sims.max(axis=1, initial=-np.inf)
        positions = np.arange(count)[None, :] < (start + rows)[:, None]
        earlier[start:stop] = np.where(positions, sims, -np.inf).max(axis=1, initial=-np.inf)
    return earlier, nearest


def relative_eps(nearest: np.ndarray, scale: float, floor: float = 1e-6) -> float:
    """eps = scale x the median nearest-neighbour cosine distance of a cluster's members (at least
    ``floor``, so exact copies, cosine 1, are still duplicates when most members are copies)."""
    distances = 1.0 - nearest[np.isfinite(nearest)].astype(np.float64)
    return max(floor, scale * float(np.median(distances))) if distances.size else floor
