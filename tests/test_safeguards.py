"""Real-data safeguards (issue 11): a stage removing nearly everything is called out (and refused
under --strict), the funnel follows select, each removal is counted once, a redirected run logs
a line per stage, and the pools that trip up naive recipes get clear answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.cli import main
from curate.reports.summary import summary
from curate.runio import read_json
from tests.helpers import write_pool

BIN = Path(sys.executable).parent


def recipe_file(tmp_path: Path, mapping: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(mapping))
    return path


def one_word_pool(directory: Path) -> Path:
    write_pool(directory, [30, 30])
    for shard in sorted(directory.glob("*.parquet")):
        table = pq.read_table(shard)
        words = pa.array([f"word{i}" for i in range(table.num_rows)])
        pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", words), shard)
    return directory


def test_a_stage_removing_nearly_everything_warns_and_strict_refuses(tmp_path, capsys, caplog):
    pool = one_word_pool(tmp_path / "pool")  # every caption has one word: DataComp basic removes all
    recipe = recipe_file(tmp_path, {"stages": {"basic": {}}, "select": "basic_keep"})
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    report = read_json(tmp_path / "out" / "report.json")
    messages = [w["message"] for w in report["warnings"]]
    assert any("stage basic removes 100% of the pool" in m and "few_words" in m for m in messages), messages
    assert any("keeps no row; the stage that removes most is basic" in m for m in messages), messages
    assert "stage basic removes 100% of the pool (few_words=" in caplog.text  # logged right after the stage
    assert "WARNING: stage basic removes 100%" in summary(report)  # and in the summary the run prints
    capsys.readouterr()
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(tmp_path / "strict"), "--workers", "1",
                 "--strict"]) == 2
    assert "removes 100% of the pool" in capsys.readouterr().err and not (tmp_path / "strict" / "subset").exists()


def test_a_pool_of_1x1_images_is_called_out_by_its_top_reason(tmp_path):
    pool = write_pool(tmp_path / "pool", [20])
    table = pq.read_table(pool / "00000.parquet")
    ones = pa.array([1] * table.num_rows, pa.int64())
    for column in ("original_width", "original_height"):
        table = table.set_column(table.schema.get_field_index(column), column, ones)
    pq.write_table(table, pool / "00000.parquet")
    recipe = recipe_file(tmp_path, {"stages": {"align": {}}, "select": "align_keep", "max_removed_share": 0.5})
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    warning = read_json(tmp_path / "out" / "report.json")["warnings"][0]
    assert warning["stage"] == "align" and "too_small" in warning["top_reasons"]


def test_the_funnel_follows_select_and_each_removal_counts_once(tmp_path):
    pool = write_pool(tmp_path / "pool", [60, 40])
    select = "status = 'success' AND align_keep AND basic_keep"
    recipe = recipe_file(tmp_path, {"stages": {"basic": {}, "align": {}}, "select": select})
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    report = read_json(tmp_path / "out" / "report.json")
    steps = report["funnel"]
    assert [s["step"] for s in steps] == ["pool", "(status = 'success')", "align_keep", "basic_keep"]
    assert steps[0]["rows_left"] == 100 and steps[-1]["rows_left"] == report["rows_out"]
    assert all(a["rows_left"] - b["rows_left"] == b["removed"] for a, b in zip(steps, steps[1:]))
    table = pq.read_table(sorted(pool.glob("*.parquet")))
    assert steps[1]["rows_left"] == table.column("status").to_pylist().count("success")


def test_dbp_does_not_count_what_semdedup_removed(tmp_path):
    from tests.helpers import planted_embeddings, write_embedding_pool

    pool = write_embedding_pool(tmp_path / "pool", [40, 40], planted_embeddings(80, dim=8, duplicates=20))
    stages = {"cluster": {"clusters": 3}, "semdedup": {"eps": 0.05}, "dbp": {"keep_fraction": 0.8, "clusters": 2,
                                                                            "neighbours": 1}}
    recipe = recipe_file(tmp_path, {"stages": stages, "select": "semdedup_keep AND dbp_keep"})
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    report = read_json(tmp_path / "out" / "report.json")
    assert report["stages"]["semdedup"]["removed"] > 0
    assert "semdedup" not in report["stages"]["dbp"]["by_reason"]
    assert report["stages"]["dbp"]["removed"] == report["stages"]["dbp"]["by_reason"].get("pruned", 0)


def test_a_redirected_run_logs_a_line_per_stage_and_progress(tiny_pool, tmp_path):
    out = tmp_path / "out"
    log_path = tmp_path / "redirected.log"
    with open(log_path, "w") as handle:  # not a terminal: log lines, no bars
        result = subprocess.run([str(BIN / "curate"), "run", "jobs/recipes/filters.yaml", "--pool", str(tiny_pool),
                                 "--out", str(out), "--workers", "1", "--set", "metaclip.t=5"],
                                stdout=handle, stderr=subprocess.STDOUT, timeout=300,
                                env={**os.environ, "CURATE_PROGRESS_SECONDS": "0"})
    assert result.returncode == 0
    text = log_path.read_text()
    for number, stage in enumerate(["basic", "laion2b", "align", "metaclip_match", "metaclip"], start=1):
        assert f"stage {number}/5 {stage}: start" in text, stage
        assert f"{stage}: done in " in text, stage
    assert "basic: done in" in text and "removes" in text and "few_words=" in text
    assert "parts (" in text  # progress lines: "basic: 4/4 parts (100%), ..."
    assert (out / "_curate.log").read_text().count("stage 1/5 basic: start") == 1
