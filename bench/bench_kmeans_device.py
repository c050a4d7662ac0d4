"""Benchmark: image_based's k-means and nearest-centroid assignment, faiss on the CPU against torch on a
device (a GPU), on the same synthetic clustered float32 rows; projected to DataComp small's image_based
(12.8M x 768 L/14 embeddings, k = 100,000, 20 iterations).

- faiss: curate.kernels.kmeans.train (DataComp's settings: plain L2, one thread) and kmeans.assign on numpy;
- torch: curate.kernels.kmeans_torch.train and kmeans.assign(device=...) on --device.
Both assignments must give the same ids (the float64 decision is shared); the training objectives
(sum of squared distances) are printed side by side. The projection scales each measured time by
n.k.d (per iteration for training) to 12.8M x 100,000 x 768.

    .venv/bin/python bench/bench_kmeans_device.py [--rows 100000] [--dim 768] [--clusters 1000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from curate.kernels import kmeans, kmeans_torch

SMALL = 12_800_000 * 100_000 * 768  # DataComp small's image_based: n.k.d per pass


def rows(count: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middles = rng.normal(size=(centres, dim)).astype(np.float32)
    return middles[rng.integers(0, centres, count)] + 0.5 * rng.normal(size=(count, dim)).astype(np.float32)


def inertia(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """The L2 k-means objective: each row's squared distance to its nearest centroid, summed."""
    total = 0.0
    for start in range(0, len(vectors), 4096):
        chunk = vectors[start:start + 4096]
        distances = (chunk ** 2).sum(1)[:, None] - 2 * chunk @ centroids.T + (centroids ** 2).sum(1)[None]
        total += float(distances.min(axis=1).sum())
    return total


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    vectors = rows(args.rows, args.dim, args.clusters // 2)
    device = kmeans_torch.resolve(args.device)
    report = {"rows": args.rows, "dim": args.dim, "clusters": args.clusters, "iterations": args.iterations, "device": device}
    faiss_centroids, report["faiss_train_s"] = timed(kmeans.train, vectors, args.clusters, iterations=args.iterations,
                                                     seed=0, spherical=False, max_points_per_centroid=args.rows)
    torch_centroids, report["torch_train_s"] = timed(kmeans_torch.train, vectors, args.clusters,
                                                     iterations=args.iterations, seed=0, spherical=False, device=device)
    (cpu_ids, _), report["numpy_assign_s"] = timed(kmeans.assign, vectors, faiss_centroids)
    (device_ids, _), report["device_assign_s"] = timed(kmeans.assign, vectors, faiss_centroids, device)
    report["same_ids"] = bool(np.array_equal(cpu_ids, device_ids))
    report["faiss_inertia"], report["torch_inertia"] = inertia(vectors, faiss_centroids), inertia(vectors, torch_centroids)
    scale = SMALL / (args.rows * args.clusters * args.dim)
    for name in ("faiss_train_s", "torch_train_s"):
        report[f"{name[:-2]}_projected_small_h"] = round(report[name] * scale * 20 / args.iterations / 3600, 1)
    for name in ("numpy_assign_s", "device_assign_s"):
        report[f"{name[:-2]}_projected_small_h"] = round(report[name] * scale / 3600, 2)
    report["train_speedup"] = round(report["faiss_train_s"] / report["torch_train_s"], 1)
    report["assign_speedup"] = round(report["numpy_assign_s"] / report["device_assign_s"], 1)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}, indent=2))
    assert report["same_ids"], "device assignment differs from numpy's"


if __name__ == "__main__":
    main()
