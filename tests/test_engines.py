"""The engines: row-aligned uid-keyed output, resume, staleness, local == Spark."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.recipe import load_recipe, parse_recipe
from curate.runio import read_manifest
from tests.helpers import make_rows, run_subset, write_pool

BIN = Path(sys.executable).parent


def stage_table(out: Path, stage: str):
    return pq.read_table(sorted((out / stage).glob("part-*.parquet"))).sort_by("uid")


def run_align(pool, out, engine="local", spark=None, **values):
    recipe = parse_recipe({"stages": {"align": values}, "select": "align_keep"}, "t")
    return pipeline.run_stage(*recipe.stages[0], pool, out, engine=engine, workers=2, spark=spark)


def test_local_stage_output_is_row_aligned_with_the_pool(tiny_pool, tmp_path):
    out = tmp_path / "out"
    manifest = run_align(tiny_pool, out)
    assert manifest["status"] == "complete" and manifest["rows"] == 100 and manifest["partitions"] == 4
    for index in range(4):
        part = pq.read_table(out / "align" / f"part-{index:05d}.parquet")
        pool = pq.read_table(tiny_pool / f"{index:05d}.parquet")
        assert part.column("uid").equals(pool.column("uid"))
        assert part.column_names == ["uid", "align_keep", "align_reason"]
    assert manifest["config"]["max_images_per_text"] == 10 and "pyarrow" in manifest["versions"]


def test_completed_stage_is_skipped_and_a_config_change_recomputes(tiny_pool, tmp_path):
    out = tmp_path / "out"
    run_align(tiny_pool, out)
    first = read_manifest(out / "align")
    again = run_align(tiny_pool, out)
    assert again["written_at"] == first["written_at"]  # skipped, nothing rewritten
    changed = run_align(tiny_pool, out, min_side=100)
    assert changed["fingerprint"] != first["fingerprint"] and changed["config"]["min_side"] == 100


def test_a_missing_partition_is_recomputed_on_resume(tiny_pool, tmp_path):
    out = tmp_path / "out"
    run_align(tiny_pool, out)
    expected = stage_table(out, "align")
    (out / "align" / "part-00002.parquet").unlink()
    (out / "align" / "_done" / "part-00002.json").unlink()
    manifest = read_manifest(out / "align")
    manifest["status"] = "running"  # as a killed run leaves it
    (out / "align" / "_manifest.json").write_text(__import__("json").dumps(manifest))
    run_align(tiny_pool, out)
    assert stage_table(out, "align").equals(expected)


@pytest.mark.spark
def test_spark_stage_equals_local_stage(tiny_pool, tmp_path, spark):
    run_align(tiny_pool, tmp_path / "local")
    run_align(tiny_pool, tmp_path / "spark", engine="spark", spark=spark)
    assert stage_table(tmp_path / "spark", "align").equals(stage_table(tmp_path / "local", "align"))
    assert read_manifest(tmp_path / "spark" / "align")["layout"] == "spark"


@pytest.mark.spark
def test_recipe_subset_npy_is_byte_identical_on_both_engines(tmp_path, spark):
    pool = write_pool(tmp_path / "pool", [300, 0, 250, 450])
    recipe = load_recipe("jobs/recipes/filters.yaml")
    local_report = pipeline.run_recipe(recipe, pool, tmp_path / "local", engine="local", workers=2)
    spark_report = pipeline.run_recipe(recipe, pool, tmp_path / "spark", engine="spark", master="local[2]")
    local_npy = (tmp_path / "local" / "subset.npy").read_bytes()
    assert local_npy == (tmp_path / "spark" / "subset.npy").read_bytes()
    subset = np.load(tmp_path / "local" / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8") and len(subset) == local_report["rows_out"] > 0
    assert np.array_equal(subset, np.sort(subset, order=["f0", "f1"]))
    assert local_report["stages"] == spark_report["stages"]
    local_rows = pq.read_table(sorted((tmp_path / "local" / "subset").glob("part-*.parquet"))).sort_by("uid")
    spark_rows = pq.read_table(sorted((tmp_path / "spark" / "subset").glob("part-*.parquet"))).sort_by("uid")
    assert spark_rows.select(local_rows.column_names).equals(local_rows)


def _curate(*args, **kwargs):
    return subprocess.Popen([str(BIN / "curate"), *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_gives_the_uninterrupted_result(tmp_path):
    pool = write_pool(tmp_path / "pool", [2000] * 12)
    reference = tmp_path / "reference"
    assert _curate("run", "jobs/recipes/filters.yaml", "--pool", pool, "--out", reference, "--workers", "1").wait() == 0
    out = tmp_path / "killed"
    process = _curate("run", "jobs/recipes/filters.yaml", "--pool", pool, "--out", out, "--workers", "1")
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "basic" / "_done").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list((out / "basic" / "_done").glob("*.json")))
    assert 3 <= done < 12, "the kill should land in the middle of the basic stage"
    assert read_manifest(out / "basic")["status"] == "running"
    assert _curate("run", "jobs/recipes/filters.yaml", "--pool", pool, "--out", out, "--workers", "1").wait() == 0
    assert (out / "subset.npy").read_bytes() == (reference / "subset.npy").read_bytes()
    for stage in ("basic", "laion2b", "align", "subset"):
        assert stage_table(out, stage).equals(stage_table(reference, stage)), stage
    assert not list(out.glob("**/.*tmp*"))


@pytest.mark.spark
@pytest.mark.slow
def test_spark_submit_runs_a_stage(tiny_pool, tmp_path):
    run_align(tiny_pool, tmp_path / "local")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run([str(BIN / "spark-submit"), "--master", "local[2]", "jobs/align.py",
                             "--pool", str(tiny_pool), "--out", str(tmp_path / "submitted")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert stage_table(tmp_path / "submitted", "align").equals(stage_table(tmp_path / "local", "align"))
    assert read_manifest(tmp_path / "submitted" / "align")["engine"] == "spark"


@pytest.mark.spark
def test_local_engine_refuses_to_continue_a_spark_run_directory(tiny_pool, tmp_path, spark):
    out = tmp_path / "out"
    run_align(tiny_pool, out, engine="spark", spark=spark)
    recipe = parse_recipe({"stages": {"align": {}}, "select": "align_keep"}, "t")
    with pytest.raises(Exception, match="row-aligned|spark engine"):
        run_subset(tiny_pool, out, ["align"], recipe.select)


def _pool_with_scores(directory: Path) -> Path:
    """Two shards with a float column holding NaN: the select must not keep NaN rows."""
    directory.mkdir(parents=True)
    scores = [[0.9, float("nan"), 0.1, 0.5], [float("nan"), 0.7, None, 0.3]]
    for index, values in enumerate(scores):
        rows = make_rows(len(values), offset=index * 4)
        rows["score"] = values
        pq.write_table(pa.table(rows), directory / f"{index:05d}.parquet")
    return directory


@pytest.mark.parametrize("engine", ["local", pytest.param("spark", marks=pytest.mark.spark)])
def test_select_reads_nan_as_null_and_keeps_nan_in_the_rows(tmp_path, engine, request):
    pool = _pool_with_scores(tmp_path / "pool")
    out = tmp_path / "out"
    if engine == "local":
        run_subset(pool, out, [], "score >= 0.5")
    else:
        run_subset(pool, out, [], "score >= 0.5", "spark", request.getfixturevalue("spark"))
    kept = pq.read_table(sorted((out / "subset").glob("part-*.parquet"))).sort_by("score")
    assert kept.column("score").to_pylist() == [0.5, 0.7, 0.9]
    # NOT (score >= 0.5): NaN is NULL, so NOT NULL is NULL, not true; the rows keep NaN otherwise
    shutil.rmtree(out)
    if engine == "local":
        run_subset(pool, out, [], "score < 0.5 OR score IS NULL")
    else:
        run_subset(pool, out, [], "score < 0.5 OR score IS NULL", "spark", request.getfixturevalue("spark"))
    kept = pq.read_table(sorted((out / "subset").glob("part-*.parquet"))).column("score").to_pylist()
    assert len(kept) == 5 and sum(v != v for v in kept if v is not None) == 2 and None in kept


@pytest.mark.spark
def test_spark_settings_are_curates_defaults_unless_the_user_set_them(spark):
    from curate.engines.spark import SQL_DEFAULTS, get_spark

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    assert spark.conf.get(key) == SQL_DEFAULTS[key] == "1000000"  # not Spark's 10,000: per-batch costs dominate
    spark.conf.set(key, "123")  # as spark-submit --conf or spark-defaults.conf would
    try:
        assert get_spark().conf.get(key) == "123"
    finally:
        spark.conf.set(key, SQL_DEFAULTS[key])


@pytest.mark.spark
def test_spark_stops_a_stage_whose_input_lacks_rows_of_the_pool(tmp_path, spark):
    """Spark joins inputs by uid starting from an earlier output or sidecar: one that lost a row would
    silently drop it, so the rows written are checked against the pool's and the stage is not complete."""
    from curate.errors import PoolError
    from tests.helpers import planted_embeddings, write_embedding_pool

    pool = write_embedding_pool(tmp_path / "pool", [30, 30], planted_embeddings(60))
    part = pool / "embeddings" / "b32" / "part-00001.parquet"
    pq.write_table(pq.read_table(part).slice(1), part)  # the sidecar lacks the shard's first row
    with pytest.raises(PoolError, match=r"stage cluster: wrote 59 rows, but the pool has 60"):
        pipeline.run_stage("cluster", parse_recipe({"stages": {"cluster": {"clusters": 2}}, "select": "true"}, "t")
                           .stages[0][1], pool, tmp_path / "out", engine="spark", spark=spark)
    assert read_manifest(tmp_path / "out" / "cluster")["status"] == "running"
