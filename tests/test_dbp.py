"""dbp: quotas against a brute-force check of the constraint set, statistics and selection
against straightforward implementations with fixed centroids, local == Spark."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from curate.errors import RecipeError
from curate.kernels import kmeans
from curate.kernels.embeddings import encode
from curate.stages import dbp
from curate.stages.dbp import DbpConfig
from tests.helpers import planted_embeddings, run, table, write_embedding_pool


def exact_lambda(base, lower, upper, target):
    """sum clip(base + lam, lower, upper) is piecewise linear in lam: solve it between breakpoints."""
    points = np.unique(np.r_[lower - base, upper - base])
    total = lambda lam: np.clip(base + lam, lower, upper).sum()  # noqa: E731
    for left, right in zip(points[:-1], points[1:]):
        if total(left) <= target <= total(right):
            slope = ((base + (left + right) / 2 > lower) & (base + (left + right) / 2 < upper)).sum()
            return left + (target - total(left)) / slope if slope else left
    return points[-1]


@pytest.mark.parametrize("sizes,shares,target", [
    ([5, 1, 0, 7], [0.4, 0.3, 0.2, 0.1], 6), ([3, 3, 3], [0.8, 0.1, 0.1], 7), ([10, 2, 4, 1, 6], [0.1, 0.5, 0.2, 0.1, 0.1], 11),
    ([4, 4], [0.5, 0.5], 5), ([9, 1, 1], [0.05, 0.9, 0.05], 8), ([2, 6, 3], [0.2, 0.3, 0.5], 0)])
def test_quotas_against_brute_force(sizes, shares, target):
    sizes, shares = np.array(sizes), np.array(shares)
    real, whole = dbp.quotas(shares, sizes, target)
    lower = np.maximum(0, np.minimum(int(0.5 * target / len(sizes)), sizes - 1))
    lam = exact_lambda(shares * target, lower.astype(float), sizes.astype(float), target)
    assert np.allclose(real, np.clip(shares * target + lam, lower, sizes), atol=1e-9)
    feasible = [x for x in itertools.product(*[range(lo, n + 1) for lo, n in zip(lower, sizes)]) if sum(x) == target]
    assert tuple(whole) in feasible  # sum exactly N, lb <= x <= n
    assert np.all(np.abs(whole - real) < 1)
    best = min(feasible, key=lambda x: (np.abs(np.array(x) - real).sum(), tuple(-np.array(x))))
    assert np.abs(whole - real).sum() <= np.abs(np.array(best) - real).sum() + 1e-9  # rounding is as close as any


def test_cluster_statistics_match_a_straightforward_computation():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(25, 6))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    previous = pa.table({"centroid_id": pa.array(range(25), pa.int32()), "centroid": kmeans.centroid_column(centroids)})
    sizes = rng.integers(0, 40, 25)
    sizes[3] = 0
    distance = np.array([int(s * 0.3 * dbp.FIXED_POINT) for s in sizes])
    stats = dbp.cluster_table(previous, sizes, distance, 200, DbpConfig(keep_fraction=0.5))
    cos = centroids.astype(np.float32).astype(np.float64) @ centroids.astype(np.float32).astype(np.float64).T
    d_inter = [np.mean(sorted(1 - cos[j, i] for i in range(25) if i != j)[:20]) for j in range(25)]
    complexity = [d_inter[j] * 0.3 if sizes[j] else np.nan for j in range(25)]
    mean = np.nanmean(complexity)
    complexity = [mean if np.isnan(c) else c for c in complexity]
    shares = np.exp(np.array(complexity) / 0.5) / np.exp(np.array(complexity) / 0.5).sum()
    assert np.allclose(stats.column("d_inter").to_numpy(), d_inter, atol=1e-6)
    assert np.allclose(stats.column("complexity").to_numpy(), complexity, atol=1e-6)
    assert np.allclose(stats.column("share").to_numpy(), shares, atol=1e-6)
    assert stats.column("quota").to_numpy().sum() == 200 and stats.column("quota")[3].as_py() == 0


def test_apply_keeps_the_farthest_members_with_fixed_centroids():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]])
    angles = np.array([0.1, 0.3, 0.2, 0.3, 1.4, 1.5, 1.3, 0.05])
    vectors = np.c_[np.cos(angles), np.sin(angles)]
    uids = [f"{i:032x}" for i in (5, 4, 3, 2, 1, 0, 6, 7)]
    artifact = pa.table({"centroid_id": pa.array([0, 1], pa.int32()), "centroid": kmeans.centroid_column(centroids),
                         "quota": pa.array([2, 1], pa.int64())})
    rows = pa.table({"uid": uids, "semdedup_keep": [True] * 7 + [False], "image_emb": encode(vectors)})
    out = dbp.apply(rows, DbpConfig(keep_fraction=0.5), artifact)
    # cluster 0: angles 0.1, 0.3, 0.2, 0.3 (+ 0.05 removed by semdedup); farthest = the two 0.3s, ties by uid
    # cluster 1: angles 1.4 (sim cos(0.17)), 1.5 (0.07), 1.3 (0.27): farthest = 1.3
    assert out.column("dbp_keep").to_pylist() == [False, True, False, True, False, False, True, False]
    assert out.column("dbp_cluster_id").to_pylist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert out.column("dbp_reason").to_pylist()[7] == "semdedup" and out.column("dbp_reason").to_pylist()[0] == "pruned"


def test_keep_fraction_is_required():
    with pytest.raises(RecipeError, match="keep_fraction"):
        DbpConfig()


def dbp_run(tmp_path, engine="local", spark=None, out="out"):
    vectors = planted_embeddings(400, dim=16, centres=4, duplicates=40, seed=5)
    valid = np.ones(400, dtype=bool)
    valid[7] = False
    pool = write_embedding_pool(tmp_path / "pool", [150, 0, 130, 120], vectors, valid)
    run("cluster", pool, tmp_path / out, engine=engine, spark=spark, clusters=4)
    run("semdedup", pool, tmp_path / out, engine=engine, spark=spark)
    run("dbp", pool, tmp_path / out, engine=engine, spark=spark, keep_fraction=0.5, clusters=5, neighbours=3)
    return tmp_path / out


def test_dbp_keeps_exactly_the_target(tmp_path):
    out = dbp_run(tmp_path)
    got = table(out, "dbp")
    stats = pa.parquet.read_table(out / "dbp" / "clusters.parquet")  # the published per-cluster statistics
    assert stats.equals(pa.parquet.read_table(out / "dbp" / "_artifact.parquet"))
    kept_by_semdedup = table(out, "semdedup").column("semdedup_keep").to_pylist().count(True)
    assert stats.column("target")[0].as_py() == kept_by_semdedup // 2
    assert got.column("dbp_keep").to_pylist().count(True) == kept_by_semdedup // 2
    per_cluster = np.bincount(got.filter(got.column("dbp_keep")).column("dbp_cluster_id").to_numpy(), minlength=5)
    assert list(per_cluster) == stats.column("quota").to_pylist()


@pytest.mark.spark
def test_spark_dbp_equals_local(tmp_path, spark):
    local = dbp_run(tmp_path)
    remote = dbp_run(tmp_path / "s", engine="spark", spark=spark, out="spark")
    for stage in ("semdedup", "dbp"):
        assert table(remote, stage).equals(table(local, stage)), stage
