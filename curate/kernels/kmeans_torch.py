"""k-means and nearest-centroid scores on a torch device: the GPU path of the image_based stage
(DataComp clusters its pool into k = 100,000 on GPUs; on 2 CPU cores faiss needs days for 12.8M rows).

- ``train``: Lloyd's k-means as faiss runs it, on ``device`` in float32 (TF32 off): initial centroids
  are ``clusters`` distinct rows drawn by numpy's ``default_rng(seed).permutation`` (faiss draws its own
  permutation, so the two start apart and end with different centroids of the same quality); each
  iteration assigns every row to its nearest centroid (L2: largest x.c - |c|^2 / 2; spherical: largest
  x.c), moves each centroid to the mean of its rows (spherical: then to unit length), and splits a
  cluster for each empty one as faiss does: the two centroids are the split one's scaled by 1 +- 1/1024
  in alternate coordinates, and the next assignment divides its rows. faiss picks the cluster to split
  at random, weighted by size; here it is the largest, so no random state is needed. The result
  depends on the device's float32 reductions: the same device gives the same centroids.
- ``Candidates``: for ``curate.kernels.kmeans.assign``, the float32 scores on the device and the
  centroids within the rounding bound of each row's best; the exact float64 decision among them
  stays on the CPU, so assignment gives the same ids on every device.
"""

from __future__ import annotations

import numpy as np

SPLIT_EPS = 1.0 / 1024  # faiss Clustering's EPS for splitting a cluster
DEVICE_CHUNK_ELEMENTS = 1 << 27  # rows x centroids scored at once on a device (512 MiB of float32)


def resolve(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else as given (checked by torch)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU on this machine (use cpu or auto)")
    return device


def _nearest(x, centroids, spherical: bool, chunk: int):
    import torch

    half_norms = None if spherical else 0.5 * (centroids * centroids).sum(dim=1)
    ids = torch.empty(len(x), dtype=torch.long, device=x.device)
    for start in range(0, len(x), chunk):
        scores = x[start:start + chunk] @ centroids.T
        if half_norms is not None:
            scores -= half_norms
        ids[start:start + chunk] = scores.argmax(dim=1)
    return ids


def train(vectors: np.ndarray, clusters: int, *, iterations: int, seed: int, spherical: bool,
          device: str) -> np.ndarray:
    """(clusters, dim) float32 centroids of ``vectors`` (float32 rows in a fixed order), on ``device``."""
    import torch

    count, dim = vectors.shape
    if not 1 <= clusters <= count:
        raise ValueError(f"k-means: {clusters} clusters for {count} rows")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as faiss computes them
    try:
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
        start = np.sort(np.random.default_rng(seed).permutation(count)[:clusters])
        centroids = x[torch.from_numpy(start).to(device)].clone()
        chunk = max(1, DEVICE_CHUNK_ELEMENTS // clusters)
        for _ in range(iterations):
            ids = _nearest(x, centroids, spherical, chunk)
            sizes = torch.bincount(ids, minlength=clusters)
            sums = torch.zeros_like(centroids).index_add_(0, ids, x)
            filled = sizes > 0
            centroids[filled] = sums[filled] / sizes[filled].unsqueeze(1).to(x.dtype)
            _split_empty(centroids, sizes)
            if spherical:
                centroids = torch.nn.functional.normalize(centroids, dim=1)
        return centroids.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _split_empty(centroids, sizes) -> None:
    """Each empty cluster takes half of the (then) largest one: faiss' split, on the largest cluster."""
    import torch

    sizes = sizes.clone()
    signs = torch.where(torch.arange(centroids.shape[1], device=centroids.device) % 2 == 0, 1.0, -1.0)
    for empty in torch.nonzero(sizes == 0).flatten().tolist():
        largest = int(torch.argmax(sizes))
        if sizes[largest] < 2:
            break
        source = centroids[largest].clone()
        centroids[empty] = source * (1 + SPLIT_EPS * signs)
        centroids[largest] = source * (1 - SPLIT_EPS * signs)
        sizes[empty] = sizes[largest] // 2
        sizes[largest] -= sizes[empty]


class Candidates:
    """For ``kmeans.assign``: the (row, centroid) pairs whose float32 score on ``device`` is within
    ``bound`` of the row's best (the same rule as the numpy path, on the device)."""

    def __init__(self, centroids: np.ndarray, scale: float, device: str):
        import torch

        self.torch, self.scale = torch, scale
        self.centroids = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
        self.step = max(1, DEVICE_CHUNK_ELEMENTS // max(1, len(centroids)))

    def __call__(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the bound holds for float32 products only
        try:
            x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(self.centroids.device)
            scores = x @ self.centroids.T
            bound = self.scale * torch.clamp(torch.linalg.vector_norm(x, dim=1), min=1.0)
            close = scores >= scores.max(dim=1, keepdim=True).values - bound.unsqueeze(1)
            rows, candidates = torch.nonzero(close, as_tuple=True)
            return rows.cpu().numpy(), candidates.cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
