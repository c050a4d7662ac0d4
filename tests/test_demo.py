"""The demo end to end, as `make demo` runs it: generate, serve, img2dataset, recipe, report."""

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli import main
from curate.demo.draw import OBJECTS
from curate.resources import metadata_path
from curate.runio import read_json

T = 20  # metaclip.t for 400 samples (the recipe's 150 is for 3,000)
CLEAN_KEPT = 0.4  # MetaCLIP removes clean samples of head concepts on purpose


def shard_members(shards):
    """Every member of the training tars; KEY.json without its url (the loopback server's port
    changes between demo runs)."""
    members = {}
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as archive:
            for info in archive:
                data = archive.extractfile(info).read()
                if info.name.endswith(".json"):
                    data = {k: v for k, v in json.loads(data).items() if k != "url"}
                members[f"{path.name}/{info.name}"] = data
    return members


def test_the_demo_concept_list_is_what_the_demo_draws():
    with open(metadata_path("demo_concepts.txt")) as handle:
        assert handle.read().splitlines() == list(OBJECTS)


@pytest.mark.slow
def test_demo_end_to_end_finds_the_planted_defects(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "400", "--workers", "2", "--set", f"metaclip.t={T}"]) == 0
    report = read_json(out / "report.json")
    truth = report["ground_truth"]
    assert report["rows_in"] == 400
    assert list(report["stages"]) == ["basic", "laion2b", "align", "metaclip", "metaclip_worldwide", "score",
                                      "semdedup", "dbp"]
    worldwide = {row["language"]: row for row in report["metaclip_worldwide"]["languages"] if row["captions"]}
    assert worldwide["en"]["t"] == 150 and len(worldwide) >= 4  # the demo's foreign captions, balanced per language
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
    # MetaCLIP over the demo's concepts caps the Zipfian head at ~t and leaves the tail whole
    head = {row["entry"]: row for row in report["metaclip"]["head"]}
    assert head["circle"]["count_pool"] > 3 * T and head["circle"]["count_balanced"] <= 2 * T, head["circle"]
    assert all(row["count_balanced"] == row["count_pool"] for row in head.values() if row["count_pool"] <= T)
    assert report["metaclip"]["entries_reaching_t"] >= 2
    assert truth["clean_kept"] > CLEAN_KEPT
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
    # the recommended recipe for real pools, on the same pool with the same DFN: it keeps most clean
    # samples and removes most planted defects (the demo recipe, tuned to this pool, keeps far fewer)
    web = tmp_path / "web"
    assert main(["run", "jobs/recipes/web_default.yaml", "--pool", str(out / "pool"), "--out", str(web),
                 "--set", "embed.model=curate-tiny-vit", "--set", f"embed.pretrained={out / 'dfn' / 'dfn.pt'}",
                 "--strict"]) == 0
    web_truth = read_json(web / "report.json")["ground_truth"]
    assert web_truth["clean_kept"] >= 0.8 and web_truth["defects_removed"] >= 0.9, web_truth["subset"]
    assert web_truth["clean_kept"] > truth["clean_kept"]
    # a second run resumes: every step is already complete, the result is unchanged
    before = (out / "subset.npy").read_bytes()
    assert main(["demo", "--out", str(out), "--n", "400", "--workers", "2", "--set", f"metaclip.t={T}"]) == 0
    assert (out / "subset.npy").read_bytes() == before
    # the same demo with the pool's images in webdataset tars, read in place: the same subset and tars
    training_tars = shard_members(out / "shards")
    assert main(["demo", "--out", str(out), "--n", "400", "--workers", "2", "--set", f"metaclip.t={T}",
                 "--output-format", "webdataset"]) == 0
    assert sorted(p.name for p in (out / "pool").glob("*.tar")) and not list((out / "pool").glob("*.tar.tmp*"))
    assert "jpg" not in pq.read_schema(out / "pool" / "00000.parquet").names
    assert (out / "subset.npy").read_bytes() == before
    assert read_json(out / "shards" / "_manifest.json")["samples"] == len(subset)
    assert shard_members(out / "shards") == training_tars
