"""cluster: spherical k-means fit on a uid-hashed sample, assignment, bad rows, both engines."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.errors import StageError
from curate.kernels import kmeans
from curate.kernels.embeddings import encode
from curate.kernels.vectors import unit_vectors
from tests.helpers import planted_embeddings, run, table, write_embedding_pool


def test_unit_vectors_flag_bad_rows_and_normalise():
    rows = np.array([[3, 4], [0, 0], [np.nan, 1], [1, 0]], dtype=np.float32)
    column = encode(rows, np.array([True, True, True, False]))
    vectors, reason = unit_vectors([column])
    assert list(reason) == [None, "zero_norm", "non_finite", "no_embedding"]
    assert np.allclose(vectors[0], [0.6, 0.8]) and np.isnan(vectors[1:]).all()
    both, _ = unit_vectors([column, column])
    assert np.allclose(both[0], np.array([0.6, 0.8, 0.6, 0.8]) / np.sqrt(2))


def test_assign_takes_the_largest_dot_product_lowest_id_on_ties():
    centroids = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    vectors = np.array([[0.6, 0.8], [1, 0], [-1, 0]], dtype=np.float32)
    ids, sims = kmeans.assign(vectors, centroids)
    assert list(ids) == [1, 0, 1] and np.allclose(sims, [0.8, 1.0, 0.0])


def test_cluster_stage_assigns_every_usable_row(tmp_path):
    vectors = planted_embeddings(100, centres=4)
    valid = np.ones(100, dtype=bool)
    valid[[3, 50]] = False
    vectors[7] = 0.0
    pool = write_embedding_pool(tmp_path / "pool", [40, 0, 35, 25], vectors, valid)
    manifest = run("cluster", pool, tmp_path / "out", clusters=4, workers=2)
    assert manifest["rows"] == 100 and manifest["artifact_rows"] == 4
    out = pq.read_table(sorted((tmp_path / "out" / "cluster").glob("part-*.parquet")))
    reasons = out.column("cluster_reason").to_pylist()
    assert reasons[3] == reasons[50] == "no_embedding" and reasons[7] == "zero_norm"
    assert out.column("cluster_id").null_count == 3
    centroids = kmeans.centroid_matrix(pq.read_table(tmp_path / "out" / "cluster" / "_artifact.parquet"))
    usable = [i for i in range(100) if reasons[i] is None]
    unit = vectors[usable].astype(np.float16).astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = (unit @ centroids.T.astype(np.float64)).argmax(axis=1)
    assert out.column("cluster_id").drop_null().to_pylist() == list(expected)
    assert np.allclose(out.column("cluster_sim").drop_null().to_numpy(), (unit @ centroids.T).max(axis=1), atol=1e-6)


def test_more_clusters_than_samples_lowers_k_and_identical_rows_work(tmp_path):
    vectors = np.tile(planted_embeddings(1, centres=1), (10, 1))
    pool = write_embedding_pool(tmp_path / "pool", [6, 4], vectors)
    manifest = run("cluster", pool, tmp_path / "out", clusters=50)
    assert manifest["artifact_rows"] == 10
    out = table(tmp_path / "out", "cluster")
    assert out.column("cluster_id").null_count == 0 and len(set(out.column("cluster_id").to_pylist())) == 1


def test_no_usable_embedding_is_a_clear_error(tmp_path):
    vectors = planted_embeddings(10)
    pool = write_embedding_pool(tmp_path / "pool", [10], vectors, np.zeros(10, dtype=bool))
    with pytest.raises(StageError, match="stage cluster .*no usable embeddings"):
        run("cluster", pool, tmp_path / "out", clusters=2)


def test_the_fit_sample_is_uid_hashed_and_bounded(tmp_path):
    pool = write_embedding_pool(tmp_path / "pool", [300, 300], planted_embeddings(600, centres=3))
    first = run("cluster", pool, tmp_path / "a", clusters=3, max_points_per_centroid=50, modality="concat")
    again = run("cluster", pool, tmp_path / "b", clusters=3, max_points_per_centroid=50, modality="concat", )
    assert first["artifact_rows"] == again["artifact_rows"] == 3
    assert table(tmp_path / "a", "cluster").equals(table(tmp_path / "b", "cluster"))
    assert pq.read_table(tmp_path / "a" / "cluster" / "_artifact.parquet").equals(
        pq.read_table(tmp_path / "b" / "cluster" / "_artifact.parquet"))


@pytest.mark.spark
def test_spark_cluster_equals_local(tmp_path, spark):
    pool = write_embedding_pool(tmp_path / "pool", [40, 0, 35, 25], planted_embeddings(100, centres=4))
    run("cluster", pool, tmp_path / "local", clusters=4)
    run("cluster", pool, tmp_path / "spark", engine="spark", spark=spark, clusters=4)
    assert table(tmp_path / "spark", "cluster").equals(table(tmp_path / "local", "cluster"))
