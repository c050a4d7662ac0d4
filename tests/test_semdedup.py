"""semdedup: the DESIGN.md 4.3 rule against a straightforward implementation, fixed centroids,
bad inputs, the local group path and Spark's applyInArrow."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import RecipeError
from curate.kernels import dedup
from curate.kernels.embeddings import encode
from curate.stages import semdedup
from curate.stages.semdedup import SemDedupConfig
from tests.helpers import planted_embeddings, run, table, write_embedding_pool


def reference(vectors: np.ndarray, centroid_sim: np.ndarray, clusters: np.ndarray, uids: list[str], eps: float):
    """Straightforward rule: per cluster, order by (1 - sim) descending then uid; remove j iff
    some earlier member has cosine > 1 - eps; duplicate_of = the earliest such member."""
    keep, duplicate_of = [True] * len(uids), [None] * len(uids)
    for cluster in set(clusters.tolist()):
        members = sorted(np.flatnonzero(clusters == cluster), key=lambda i: (-(1.0 - centroid_sim[i]), uids[i]))
        for position, j in enumerate(members):
            for i in members[:position]:
                if float(vectors[i] @ vectors[j]) > 1.0 - eps:
                    keep[j], duplicate_of[j] = False, uids[i]
                    break
    return keep, duplicate_of


def cluster_table(vectors: np.ndarray, centroids: np.ndarray, uids: list[str], **extra) -> pa.Table:
    """Rows as the cluster stage leaves them, for FIXED centroids."""
    unit = vectors.astype(np.float16).astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    scores = unit @ centroids.T
    return pa.table({"uid": uids, "cluster_id": pa.array(scores.argmax(axis=1), pa.int32()),
                     "cluster_sim": pa.array(scores.max(axis=1), pa.float32()),
                     "cluster_reason": pa.nulls(len(uids), pa.string()), "image_emb": encode(vectors), **extra})


def test_hand_checkable_cluster():
    # one cluster, centroid (1, 0); a and a2 are near-duplicates, a (sim 0.6) is farther than a2 (0.62)
    a, a2, b = np.array([0.6, 0.8]), np.array([0.62, 0.7846]), np.array([0.8, -0.6])
    uids = ["a" * 32, "c" * 32, "b" * 32]
    rows = cluster_table(np.array([a, a2 / np.linalg.norm(a2), b]), np.array([[1.0, 0.0]]), uids)
    out = semdedup.apply(rows, SemDedupConfig(eps=0.07))
    assert out.column("semdedup_keep").to_pylist() == [True, False, True]
    assert out.column("semdedup_duplicate_of").to_pylist() == [None, "a" * 32, None]
    assert out.column("semdedup_reason").to_pylist() == [None, "duplicate", None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_straightforward_rule_with_fixed_centroids(seed, monkeypatch):
    vectors = planted_embeddings(300, dim=8, centres=3, duplicates=60, seed=seed)
    centroids = np.linalg.qr(np.random.default_rng(seed).normal(size=(8, 8)))[0][:4]
    uids = [f"{i * 7919 % 1000:032x}" for i in range(300)]
    rows = cluster_table(vectors, centroids, uids)
    unit = vectors.astype(np.float16).astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = reference(unit, rows.column("cluster_sim").to_numpy().astype(np.float64),
                         rows.column("cluster_id").to_numpy(), uids, 0.07)
    monkeypatch.setattr(dedup, "BLOCK_ELEMENTS", 64)  # many small row blocks: still the dense rule
    out = semdedup.apply(rows, SemDedupConfig(eps=0.07))
    assert (out.column("semdedup_keep").to_pylist(), out.column("semdedup_duplicate_of").to_pylist()) == expected
    assert 60 <= expected[0].count(False) < 300


def test_relative_eps_scales_with_the_clusters_nearest_neighbour_distance(monkeypatch):
    """By hand: four unit vectors at angles 0, 0.001, 0.1, 0.2 rad. Nearest-neighbour distances
    1 - cos: 5e-7, 5e-7, 1 - cos(0.099), 1 - cos(0.1) (median ~0.00245); relative_eps 0.5 -> eps
    ~0.00122: only the 0.001-rad pair is a duplicate, while the paper's fixed eps 0.07 removes three."""
    angles = np.array([0.0, 0.001, 0.1, 0.2])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    earlier, nearest = dedup.neighbour_similarities(vectors)
    assert np.isneginf(earlier[0]) and nearest[2] == pytest.approx(np.cos(0.099), abs=1e-6)
    assert dedup.relative_eps(nearest, 0.5) == pytest.approx(0.5 * (1 - np.cos(0.001) + 1 - np.cos(0.099)) / 2, rel=1e-2)
    assert dedup.relative_eps(np.array([1.0, 1.0], np.float32), 0.1) == 1e-6  # all copies: the floor
    uids = [f"{i:032x}" for i in range(4)]
    rows = pa.table({"uid": uids, "cluster_id": pa.array([0] * 4, pa.int32()),
                     "cluster_sim": pa.array([0.9, 0.8, 0.7, 0.6], pa.float32()),
                     "cluster_reason": pa.nulls(4, pa.string()), "image_emb": encode(vectors)})
    relative = semdedup.apply(rows, SemDedupConfig(eps=None, relative_eps=0.5)).column("semdedup_keep").to_pylist()
    fixed = semdedup.apply(rows, SemDedupConfig(eps=0.07)).column("semdedup_keep").to_pylist()
    assert relative == [False, True, True, True] and fixed.count(False) == 3  # uid 1 (farther) is kept first
    with pytest.raises(RecipeError, match="exactly one of eps and relative_eps"):
        SemDedupConfig(relative_eps=0.1)


def test_identical_embeddings_a_cluster_of_one_and_rows_without_a_cluster():
    vectors = np.tile([[0.6, 0.8]], (4, 1))
    uids = [f"{i:032x}" for i in (3, 1, 2, 0)]
    rows = cluster_table(vectors, np.array([[1.0, 0.0]]), uids)
    out = semdedup.apply(rows, SemDedupConfig())
    assert out.column("semdedup_keep").to_pylist() == [False, False, False, True]  # ties by uid: 0 first
    assert set(out.column("semdedup_duplicate_of").to_pylist()) == {None, f"{0:032x}"}
    single = semdedup.apply(rows.slice(0, 1), SemDedupConfig())
    assert single.column("semdedup_keep").to_pylist() == [True]
    excluded = rows.set_column(1, "cluster_id", pa.nulls(4, pa.int32())).set_column(
        3, "cluster_reason", pa.array(["no_embedding"] * 4))
    out = semdedup.apply(excluded, SemDedupConfig())
    assert out.column("semdedup_keep").to_pylist() == [False] * 4
    assert out.column("semdedup_reason").to_pylist() == ["no_embedding"] * 4


def test_prefer_column_keeps_the_highest_score():
    vectors = np.tile([[0.6, 0.8]], (3, 1))
    uids = [f"{i:032x}" for i in range(3)]
    rows = cluster_table(vectors, np.array([[1.0, 0.0]]), uids, score=pa.array([0.1, None, 0.9]))
    out = semdedup.apply(rows, SemDedupConfig(prefer_column="score"))
    assert out.column("semdedup_keep").to_pylist() == [False, False, True]
    assert out.column("semdedup_duplicate_of").to_pylist() == [uids[2], uids[2], None]


def pool_run(tmp_path, engine="local", spark=None, out="out", **cluster):
    vectors = planted_embeddings(400, dim=16, centres=4, duplicates=80, seed=3)
    valid = np.ones(400, dtype=bool)
    valid[[5, 200]] = False
    pool = write_embedding_pool(tmp_path / "pool", [150, 0, 130, 120], vectors, valid)
    run("cluster", pool, tmp_path / out, engine=engine, spark=spark, clusters=4, **cluster)
    manifest = run("semdedup", pool, tmp_path / out, engine=engine, spark=spark, workers=2)
    return pool, manifest


def test_local_group_path_is_row_aligned_and_equals_apply_on_everything(tmp_path):
    pool, manifest = pool_run(tmp_path)
    assert manifest["rows"] == 400 and not (tmp_path / "out" / "semdedup" / "_shuffle").exists()
    for index in range(4):
        part = pq.read_table(tmp_path / "out" / "semdedup" / f"part-{index:05d}.parquet")
        assert part.column("uid").equals(pq.read_table(pool / f"{index:05d}.parquet").column("uid"))
    clusters = table(tmp_path / "out", "cluster")
    embeddings = pq.read_table(sorted((pool / "embeddings" / "b32").glob("*.parquet"))).sort_by("uid")
    whole = semdedup.apply(clusters.append_column("image_emb", embeddings.column("image_emb")), SemDedupConfig())
    got = table(tmp_path / "out", "semdedup")
    assert got.drop_columns(["uid"]).equals(whole)
    assert got.column("semdedup_keep").to_pylist().count(False) >= 80  # 80 planted near-copies, 2 without embedding


@pytest.mark.spark
def test_spark_semdedup_equals_local(tmp_path, spark):
    pool_run(tmp_path, out="local")
    pool_run(tmp_path / "s", engine="spark", spark=spark, out="spark")
    assert table(tmp_path / "s" / "spark", "semdedup").equals(table(tmp_path / "local", "semdedup"))
