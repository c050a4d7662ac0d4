"""The generated inputs of the golden runs (tests/golden_runs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED, SHARDS, ROWS = 7, 3, 400


def datacomp_pool(directory: Path) -> Path:
    try:
        from curate.demo.synthetic import write_datacomp_pool
    except ImportError:  # the layout before the stages/kernels/engines split
        from curate.demo.synthetic import write_datacomp_pool
    return write_datacomp_pool(directory, shards=SHARDS, rows_per_shard=ROWS, seed=SEED)


def write_targets(source: Path, path: Path) -> Path:
    """Every 50th l14 image embedding of the first shard: 'target' images the pool really has."""
    with np.load(sorted(source.glob("*.npz"))[0]) as arrays:
        targets = arrays["l14_img"][::50].astype(np.float32)
    np.save(path, targets)
    return path
