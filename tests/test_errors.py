"""Bad input as a new user makes it: one line naming the stage, the shard file and (where known) the
uid, exit status 2, nothing half written, and a re-run after the fix resumes."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.cli import main
from curate.contract import Stage
from curate.errors import StageError
from curate.kernels.embeddings import encode
from curate.runio import read_manifest
from tests.helpers import write_embedding_pool, write_pool


def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; it must fail with status 2 and exactly one line on stderr."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0]


def with_column(pool, shard: str, name: str, values) -> None:
    path = pool / shard
    table = pq.read_table(path)
    pq.write_table(table.append_column(name, pa.array(values)), path)


def test_a_score_column_of_strings_names_the_shard_row_and_uid(tiny_pool, tmp_path, capsys):
    for shard, rows in (("00000.parquet", 40), ("00001.parquet", 0), ("00002.parquet", 35), ("00003.parquet", 25)):
        values = [f"0.{i % 9 + 1}" for i in range(rows)]
        if shard == "00002.parquet":
            values[7] = "n/a"
        with_column(tiny_pool, shard, "clip_l14_similarity_score", pa.array(values, pa.string()))
    out = tmp_path / "out"
    line = error_line(capsys, ["score", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"])
    uid = pq.read_table(tiny_pool / "00002.parquet").column("uid")[7].as_py()
    assert "stage score" in line and "00002.parquet row 7" in line and uid in line and "'n/a'" in line, line
    assert not list((out / "score").glob("part-*.parquet"))  # the fit failed: nothing written
    table = pq.read_table(tiny_pool / "00002.parquet")
    fixed = table.column("clip_l14_similarity_score").to_pylist()
    fixed[7] = "0.5"
    pq.write_table(table.set_column(table.schema.get_field_index("clip_l14_similarity_score"),
                                    "clip_l14_similarity_score", pa.array(fixed)), tiny_pool / "00002.parquet")
    assert main(["score", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0


def test_shards_that_disagree_on_a_column_type_are_refused_naming_both(tiny_pool, tmp_path, capsys):
    with_column(tiny_pool, "00000.parquet", "score", pa.array(np.ones(40), pa.float32()))
    with_column(tiny_pool, "00001.parquet", "score", pa.array([], pa.float32()))
    with_column(tiny_pool, "00002.parquet", "score", pa.array(["n/a"] * 35, pa.string()))
    with_column(tiny_pool, "00003.parquet", "score", pa.array(np.ones(25), pa.float32()))
    line = error_line(capsys, ["basic", "--pool", str(tiny_pool), "--out", str(tmp_path / "out")])
    assert "00002.parquet: column 'score' is string but float in" in line and "00000.parquet" in line


@dataclass(frozen=True)
class FlakyConfig:
    pass


def flaky_reads(cfg):
    return ("text",)


def flaky_apply(table, cfg, artifact):
    """Fails on the shard holding caption "... number 99" while the outside service is down."""
    down = os.environ.get("CURATE_TEST_SERVICE") != "up"
    if down and any(text and "number 97" in text for text in table.column("text").to_pylist()):
        raise OSError("the service this stage calls is down")
    return pa.table({"flaky_ok": np.ones(table.num_rows, bool)})


FLAKY = Stage(name="flaky", config=FlakyConfig, reads=flaky_reads, adds=pa.schema([("flaky_ok", pa.bool_())]),
              apply=flaky_apply)


def test_a_stage_failing_on_one_shard_of_ten_names_it_and_a_rerun_resumes(tmp_path, monkeypatch):
    pool = write_pool(tmp_path / "pool", [10] * 10)  # "... number 99" is in the last shard
    out = tmp_path / "out"
    monkeypatch.delenv("CURATE_TEST_SERVICE", raising=False)
    with pytest.raises(StageError, match=r"stage flaky \(apply\) in .*00009.parquet: OSError: the service"):
        pipeline.run_stage(FLAKY, FlakyConfig(), pool, out, workers=1)
    done = {p.name: p.stat().st_mtime_ns for p in (out / "flaky" / "_done").glob("*.json")}
    assert len(done) == 9 and read_manifest(out / "flaky")["status"] == "running"
    assert not list((out / "flaky").glob("part-00009*")) and not list((out / "flaky").glob(".*tmp*"))
    monkeypatch.setenv("CURATE_TEST_SERVICE", "up")
    manifest = pipeline.run_stage(FLAKY, FlakyConfig(), pool, out, workers=1)
    assert manifest["status"] == "complete" and manifest["rows"] == 100
    assert all((out / "flaky" / "_done" / name).stat().st_mtime_ns == mtime for name, mtime in done.items())


@pytest.mark.parametrize("recipe, message", [
    ({"stages": ["basic"], "select": "basic_keep"}, "'stages' is a mapping of stage name -> settings"),
    ({"stages": {"basic": {}}, "select": "basic_reason"}, "gives String, not a boolean"),
    ({"stages": {"basic": {}}, "select": "basic_keep AND uid = (SELECT x FROM read_csv('SECRET'))"},
     "not an allowed expression"),
    ({"stages": {"basic": {}}, "select": "basic_keep AND read_csv('SECRET')"}, r"read_csv\(\) is not an allowed function"),
    ({"stages": {"metaclip": {"t": 0, "metadata": "demo_concepts.txt"}}, "select": "metaclip_keep"}, "t must be >= 1"),
    ({"stages": {"basic": {}}, "select": "bsic_keep"}, r"unknown column\(s\) \['bsic_keep'\]"),
])
def test_recipe_mistakes_stop_before_any_stage_runs(recipe, message, tiny_pool, tmp_path, capsys):
    secret = tmp_path / "SECRET"
    secret.write_text("uid\nthe-secret-content\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out"
    line = error_line(capsys, ["run", str(path), "--pool", str(tiny_pool), "--out", str(out)])
    assert re.search(message, line), line
    assert "the-secret-content" not in line
    assert not [p for p in out.glob("*") if p.is_dir()]  # no stage started


def test_a_metadata_list_with_a_null_entry_names_the_file_and_entry(tiny_pool, tmp_path, capsys):
    metadata = tmp_path / "entries.json"
    metadata.write_text(json.dumps(["photo", None, "dog"]))
    line = error_line(capsys, ["metaclip", "--pool", str(tiny_pool), "--out", str(tmp_path / "out"),
                               "--set", f"metadata={metadata}"])
    assert "entries.json: entry 1 is None, not a string" in line


def test_a_set_value_with_a_python_tag_is_a_clear_error(tiny_pool, tmp_path, capsys):
    line = error_line(capsys, ["basic", "--pool", str(tiny_pool), "--out", str(tmp_path / "out"),
                               "--set", "min_side=!!python/object/apply:os.system ['true']"])
    assert "not a plain YAML value" in line


def test_embeddings_of_two_dimensions_name_the_stage_and_shard(tmp_path, capsys):
    pool = write_embedding_pool(tmp_path / "pool", [6, 4], np.eye(10, 8))
    sidecar = pool / "embeddings" / "b32" / "part-00001.parquet"
    table = pq.read_table(sidecar)
    pq.write_table(table.set_column(2, "text_emb", encode(np.eye(4, 6))), sidecar)
    line = error_line(capsys, ["score", "--pool", str(pool), "--out", str(tmp_path / "out"), "--workers", "1",
                               "--set", "embeddings=b32", "--set", "score_column=null", "--set", "fraction=0.5"])
    assert "stage score" in line and "00001.parquet" in line and "dimension 8 but its text embeddings 6" in line


def test_debug_shows_the_traceback(tiny_pool, tmp_path):
    with pytest.raises(Exception, match="not an allowed expression"):
        main(["--debug", "subset", "--pool", str(tiny_pool), "--out", str(tmp_path), "--select", "(SELECT 1)"])


@pytest.mark.spark
def test_on_spark_a_fit_pass_failing_without_uids_runs_again_to_name_the_row(tiny_pool, tmp_path, spark):
    """Spark's fit passes read no uid when the stage does not (score): the failing pass runs again with
    uids, so the error names the shard, row and uid as the local engine's does."""
    from curate import pipeline
    from curate.errors import StageError
    from tests.helpers import config

    for shard, rows in (("00000.parquet", 40), ("00001.parquet", 0), ("00002.parquet", 35), ("00003.parquet", 25)):
        values = [f"0.{i % 9 + 1}" for i in range(rows)]
        if shard == "00002.parquet":
            values[7] = "n/a"
        with_column(tiny_pool, shard, "clip_l14_similarity_score", pa.array(values, pa.string()))
    with pytest.raises(StageError) as raised:
        pipeline.run_stage("score", config("score"), tiny_pool, tmp_path / "out", engine="spark", spark=spark)
    uid = pq.read_table(tiny_pool / "00002.parquet").column("uid")[7].as_py()
    assert "00002.parquet" in str(raised.value) and "row 7" in str(raised.value) and uid in str(raised.value)
    assert not list((tmp_path / "out" / "score").glob("part-*.parquet"))
