"""image_based's GPU path on this CPU: curate's torch k-means (kmeans: torch) and nearest-centroid scores
on a torch device. torch runs the same code on "cpu" as on "cuda"; a GPU machine runs
bench/bench_kmeans_device.py for the figures."""

import logging

import numpy as np
import pytest

from curate.kernels import kmeans, kmeans_torch
from tests.helpers import run, table, write_embedding_pool


def _blobs(seed: int = 0, per: int = 100, centres: int = 6, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    middles = rng.normal(size=(centres, dim)) * 10
    labels = np.repeat(np.arange(centres), per)
    vectors = (middles[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)
    order = rng.permutation(len(labels))
    return vectors[order], labels[order]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _inertia(vectors: np.ndarray, centroids: np.ndarray) -> float:
    return float(((vectors[:, None, :] - centroids[None]) ** 2).sum(axis=2).min(axis=1).sum())


@pytest.mark.parametrize("spherical", [False, True])
def test_torch_kmeans_is_lloyds_and_finds_separated_clusters(spherical):
    """With a start holding one row of each blob (the first seed whose draw does), Lloyd's iterations
    must end on the blobs; and the result is no worse than faiss' from the same seed."""
    vectors, labels = _blobs()
    if spherical:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    seed = next(s for s in range(1000) if len(set(labels[np.random.default_rng(s).permutation(600)[:6]])) == 6)
    ours = kmeans_torch.train(vectors, 6, iterations=20, seed=seed, spherical=spherical, device="cpu")
    again = kmeans_torch.train(vectors, 6, iterations=20, seed=seed, spherical=spherical, device="cpu")
    assert np.array_equal(ours, again)  # the same device gives the same centroids
    ids = kmeans.assign(vectors, ours)[0] if spherical else np.argmin(
        ((vectors[:, None, :] - ours[None]) ** 2).sum(axis=2), axis=1)
    assert _same_partition(ids, labels)
    means = np.stack([vectors[ids == c].mean(axis=0) for c in range(6)])
    if spherical:
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-6)
    assert np.allclose(ours, means, atol=1e-4)  # a fixed point: each centroid is its rows' mean
    if not spherical:
        faiss_centroids = kmeans.train(vectors, 6, iterations=20, seed=seed, spherical=False, max_points_per_centroid=1000)
        assert _inertia(vectors, ours) <= _inertia(vectors, faiss_centroids) * (1 + 1e-5)


def test_an_empty_cluster_takes_half_of_the_largest_as_faiss_splits():
    import torch

    centroids = torch.tensor([[2.0, 4.0, 8.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    kmeans_torch._split_empty(centroids, torch.tensor([6, 0, 1]))
    eps = kmeans_torch.SPLIT_EPS
    assert torch.equal(centroids[1], torch.tensor([2 * (1 + eps), 4 * (1 - eps), 8 * (1 + eps)]))
    assert torch.equal(centroids[0], torch.tensor([2 * (1 - eps), 4 * (1 + eps), 8 * (1 - eps)]))
    assert torch.equal(centroids[2], torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="7 clusters for 6 rows"):
        kmeans_torch.train(np.ones((6, 3), np.float32), 7, iterations=1, seed=0, spherical=False, device="cpu")


def test_scores_on_a_torch_device_give_the_ids_numpy_gives():
    """Candidates within the rounding bound are found on the device, the float64 decision stays on the
    CPU: the same ids on every device, exact ties included ("cpu:0" is torch's CPU device)."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(300, 64)).astype(np.float32)
    centroids[7] = centroids[3]  # an exact tie: the lower index wins
    vectors = rng.normal(size=(2000, 64)).astype(np.float32)
    vectors[0] = centroids[3]
    vectors[1] = (centroids[5] + centroids[6]) / 2  # near-ties
    numpy_ids, numpy_sims = kmeans.assign(vectors, centroids)
    torch_ids, torch_sims = kmeans.assign(vectors, centroids, device="cpu:0")
    assert numpy_ids[0] == 3 and np.array_equal(numpy_ids, torch_ids) and np.array_equal(numpy_sims, torch_sims)
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        kmeans_torch.resolve("cuda")
    assert kmeans_torch.resolve("auto") == "cpu"


def _targets(path, vectors):
    np.save(path, vectors[:3])
    return str(path)


@pytest.mark.spark
def test_image_based_with_torch_kmeans_is_the_same_on_both_engines(tmp_path, spark):
    vectors = _blobs(per=40)[0]
    pool = write_embedding_pool(tmp_path / "pool", [120, 120], vectors)
    values = {"embeddings": "b32", "clusters": 6, "targets": _targets(tmp_path / "t.npy", vectors), "random_weights_ok": True}
    run("image_based", pool, tmp_path / "local", workers=2, kmeans="torch", device="cpu", **values)
    run("image_based", pool, tmp_path / "spark", engine="spark", spark=spark, kmeans="torch", device="cpu", **values)
    run("image_based", pool, tmp_path / "faiss", **values)
    torch_run = table(tmp_path / "local", "image_based")
    assert torch_run.equals(table(tmp_path / "spark", "image_based"))  # trained once, in the driver
    assert len(set(torch_run.column("image_based_cluster").drop_null().to_pylist())) > 1
    assert torch_run.column("image_based_keep").to_pylist() != [False] * 240
    assert table(tmp_path / "faiss", "image_based").num_rows == 240


def test_the_fit_projects_its_time_and_says_how_to_cut_it(tmp_path, caplog):
    from curate.stages.image_based import ImageBasedConfig, log_projection

    vectors = _blobs()[0]
    small = ImageBasedConfig(targets=_targets(tmp_path / "t.npy", vectors), clusters=6)
    with caplog.at_level(logging.INFO, logger="curate.stages.image_based"):
        seconds = log_projection(vectors, small, "cpu (faiss)")
        assert seconds < 60 and "k-means of 600 x 16 into 6 clusters, 20 iterations, on cpu (faiss): about" in caplog.text
        assert "Faster" not in caplog.text
        huge = ImageBasedConfig(targets=small.targets, clusters=10**9)  # as k = 100,000 on 12.8M rows would
        assert log_projection(vectors, huge, "cpu (faiss)") > 3600
    assert "image_based.kmeans=torch with device=cuda" in caplog.text and "sample_fraction=0.1" in caplog.text
