"""The demo end to end, as `make demo` runs it: generate, serve, img2dataset, recipe, report."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli import main
from curate.runio import read_json


@pytest.mark.slow
def test_demo_end_to_end_finds_the_planted_defects(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "400", "--workers", "2"]) == 0
    report = read_json(out / "report.json")
    truth = report["ground_truth"]
    assert report["rows_in"] == 400
    assert list(report["stages"]) == ["basic", "laion2b", "align", "metaclip", "score", "semdedup", "dbp"]
    assert truth["download"]["precision"] == 1.0 and truth["download"]["recall"] == 1.0
    for stage in ("basic", "align"):
        assert truth["stages"][stage]["recall"] == 1.0 and truth["stages"][stage]["precision"] == 1.0
    assert truth["stages"]["laion2b"]["recall"] == 1.0
    # the DFN trained on the separate trusted set scores mismatched captions low
    dfn = truth["stages"]["score"]
    assert dfn["recall"] >= 0.7 and dfn["precision_vs_clean"] >= 0.7, dfn
    assert read_json(out / "dfn" / "dfn.json")["samples"] == 3000
    # SemDeDup finds the planted exact and near copies; DBP's per-cluster sizes are reported
    pairs = truth["semdedup_pairs"]
    assert pairs["pairs"] > 10 and pairs["recall"] >= 0.6 and pairs["precision"] >= 0.6, pairs
    assert sum(c["size"] for c in report["dbp_clusters"]) > sum(c["kept"] for c in report["dbp_clusters"]) > 0
    assert truth["clean_kept"] > 0.6
    for defect in ("small_image", "extreme_aspect", "non_english", "short_caption", "boilerplate_caption",
                   "unreachable_url", "corrupt_image"):
        assert truth["subset"][defect]["left_in_subset"] == 0, defect
    subset = np.load(out / "subset.npy")
    rows = pq.read_table(sorted((out / "subset").glob("part-*.parquet")))
    assert subset.dtype == np.dtype("u8,u8") and len(subset) == rows.num_rows == report["rows_out"]
    assert set(rows.column("status").to_pylist()) == {"success"} and rows.column("jpg").null_count == 0
    # the run ends training-ready: shards with every selected sample, the HTML page, the notebook run
    shards = read_json(out / "shards" / "_manifest.json")
    assert shards["status"] == "complete" and shards["samples"] == len(subset) and list((out / "shards").glob("*.tar"))
    assert "<img" in (out / "report.html").read_text()
    assert '"output_type"' in (out / "walkthrough.ipynb").read_text()
    # a second run resumes: every step is already complete, the result is unchanged
    before = (out / "subset.npy").read_bytes()
    assert main(["demo", "--out", str(out), "--n", "400", "--workers", "2"]) == 0
    assert (out / "subset.npy").read_bytes() == before
