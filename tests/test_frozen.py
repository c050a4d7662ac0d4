"""Incremental curation (`curate run --frozen PREVIOUS_OUT`, curate.engines.frozen): a pool grown by
a shard, curated against the fitted statistics of a run on the old pool. For every stage with a fit
(or a freeze hook): the fit is the previous one, the rows the previous run saw keep its decisions,
the new rows follow the frozen rule (checked by hand per stage), the manifest says so, and a run
without --frozen refits. Plus the refusals, a resumed frozen run, and Spark == local."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.cli import main
from curate.demo.synthetic import write_datacomp_pool
from curate.errors import RecipeError
from curate.kernels import kmeans
from curate.kernels.rules import text_keys
from curate.kernels.vectors import embedding_matrix
from curate.recipe import parse_recipe
from curate.steps.datacomp import import_datacomp
from curate.uid import uid_pairs

FITTED = ("align", "score", "metaclip", "metaclip_worldwide", "cluster", "semdedup", "dbp", "image_based")
PLANTED = 12  # rows of the new shard whose b32 image embedding is a copy of an old row's


def recipe_mapping(targets: Path) -> dict:
    return {"stages": {
        "align": {"max_images_per_text": 2},
        "score": {"embeddings": "b32", "score_column": None, "fraction": 0.5},
        "metaclip": {"metadata": "demo_concepts.txt", "t": 4},
        "metaclip_worldwide": {"metadata": "demo_concepts_worldwide", "t_en": 4},
        "cluster": {"embeddings": "b32", "clusters": 4, "max_points_per_centroid": 64},
        "semdedup": {"embeddings": "b32", "eps": None, "relative_eps": 0.5},
        "dbp": {"embeddings": "b32", "keep_fraction": 0.5, "clusters": 3, "max_points_per_centroid": 64},
        "image_based": {"embeddings": "b32", "clusters": 6, "targets": str(targets)}},
        "select": "score_keep AND metaclip_keep AND semdedup_keep AND dbp_keep"}


def output(out: Path, stage: str) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(sorted((out / stage).glob("part-*.parquet")))).sort("uid")


def manifest(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "_manifest.json").read_text())


def artifact(out: Path, stage: str) -> pa.Table:
    return pq.read_table(out / stage / "_artifact.parquet")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("frozen")
    grown_src = write_datacomp_pool(work / "src", shards=3, rows_per_shard=160, seed=5, models=("b32",))
    with np.load(grown_src / "00000000.npz") as old, np.load(grown_src / "00000002.npz") as new:
        arrays = {name: new[name].copy() for name in new.files}
        arrays["b32_img"][:PLANTED] = old["b32_img"][:PLANTED]  # new rows duplicating old ones
        np.save(work / "targets.npy", old["b32_img"][::40].astype(np.float32))
    np.savez(grown_src / "00000002.npz", **arrays)
    old_src = work / "old_src"
    old_src.mkdir()
    for name in ("00000000", "00000001"):
        for suffix in (".parquet", ".npz"):
            shutil.copy(grown_src / f"{name}{suffix}", old_src / f"{name}{suffix}")
    import_datacomp(old_src, work / "old_pool")
    import_datacomp(grown_src, work / "pool")
    recipe = parse_recipe(recipe_mapping(work / "targets.npy"), "frozen")
    pipeline.run_recipe(recipe, work / "old_pool", work / "previous", workers=1)
    pipeline.run_recipe(recipe, work / "pool", work / "frozen", workers=1, frozen=work / "previous")
    pipeline.run_recipe(recipe, work / "pool", work / "refit", workers=1)
    old_uids = set(pq.read_table(work / "old_src" / "00000000.parquet", columns=["uid"]).column("uid").to_pylist())
    old_uids |= set(pq.read_table(work / "old_src" / "00000001.parquet", columns=["uid"]).column("uid").to_pylist())
    return work, recipe, old_uids


def split(frame: pl.DataFrame, old_uids: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    is_old = frame.get_column("uid").is_in(list(old_uids))
    return frame.filter(is_old), frame.filter(~is_old)


@pytest.mark.parametrize("stage", FITTED)
def test_frozen_stage_keeps_the_fit_and_every_previous_decision(runs, stage):
    work, _, old_uids = runs
    assert manifest(work / "frozen", stage)["fit"] == {"mode": "frozen", "from": str(work / "previous" / stage),
                                                       "fingerprint": manifest(work / "previous", stage)["fingerprint"]}
    assert manifest(work / "refit", stage)["fit"] == {"mode": "fitted"}
    frozen = artifact(work / "frozen", stage)
    if stage == "semdedup":  # no fit: its frozen artifact is the previous decisions, by uid
        decisions = output(work / "previous", stage)
        assert frozen.column("uid").to_pylist() == decisions.get_column("uid").to_list()
        assert frozen.column("keep").to_pylist() == decisions.get_column("semdedup_keep").to_list()
    else:
        previous = artifact(work / "previous", stage)
        assert frozen.select(previous.column_names).equals(previous)  # the fit itself is the previous one
    old, new = split(output(work / "frozen", stage), old_uids)
    assert old.equals(output(work / "previous", stage))          # every previous decision, every column
    assert new.height == 160


def test_a_run_without_frozen_refits_on_the_grown_pool_and_says_so(runs, caplog):
    work, recipe, _ = runs
    assert artifact(work / "refit", "score").column("threshold") != artifact(work / "previous", "score").column("threshold")
    again = work / "again"
    shutil.copytree(work / "previous", again)
    score_only = parse_recipe({"stages": {"score": recipe_mapping(work / "targets.npy")["stages"]["score"]},
                               "select": "score_keep"}, "t")
    caplog.set_level("INFO")
    pipeline.run_recipe(score_only, work / "pool", again, workers=1)
    assert "score: recomputing: pool shard 00000002.parquet is new" in caplog.text
    assert artifact(again, "score").equals(artifact(work / "refit", "score"))


def test_new_rows_score_against_the_previous_threshold(runs):
    work, _, old_uids = runs
    _, new = split(output(work / "frozen", "score"), old_uids)
    threshold = np.float32(artifact(work / "previous", "score").column("threshold")[0].as_py())
    assert (new.get_column("score_keep").to_numpy() == (new.get_column("score_clip").to_numpy() >= threshold)).all()
    assert 0 < new.get_column("score_keep").sum() < new.height


@pytest.mark.parametrize("stage", ["metaclip", "metaclip_worldwide"])
def test_new_captions_are_sampled_with_the_previous_entry_probabilities(runs, stage):
    work, _, old_uids = runs
    _, new = split(output(work / "frozen", stage).join(output(work / "frozen", f"{stage}_match"), on="uid"), old_uids)
    p = artifact(work / "previous", stage).column("p").to_numpy()
    for entries, probability in zip(new.get_column(f"{stage}_entries").to_list(), new.get_column(f"{stage}_p").to_list()):
        expected = 1.0 - np.prod([1.0 - p[e] for e in entries]) if entries else 0.0
        assert probability == pytest.approx(expected, abs=1e-12)
    refit_p = artifact(work / "refit", stage).column("p").to_numpy()
    assert not np.array_equal(p, refit_p)  # the grown pool's counts would have given other p


def test_a_caption_shared_only_in_the_grown_pool_is_not_dropped_when_frozen(runs):
    work, _, old_uids = runs
    texts = pl.concat([pl.from_arrow(pq.read_table(path, columns=["uid", "text"]))
                       for path in sorted((work / "pool").glob("*.parquet"))])
    texts = texts.with_columns(key=pl.Series(text_keys(texts.get_column("text").to_list()).to_numpy()))
    old_counts = texts.filter(pl.col("uid").is_in(list(old_uids))).group_by("key").len()
    over_before = set(old_counts.filter(pl.col("len") > 2).get_column("key").to_list())
    frozen = output(work / "frozen", "align").join(texts, on="uid")
    refit = output(work / "refit", "align").join(texts, on="uid")
    shared = frozen.filter(pl.col("align_reason") == "shared_text")
    assert set(shared.get_column("key").to_list()) <= over_before
    crossing = refit.filter((pl.col("align_reason") == "shared_text") & ~pl.col("key").is_in(list(over_before)))
    assert crossing.height > 0  # captions over the limit only with the new shard: refit drops them, frozen does not
    assert frozen.filter(pl.col("uid").is_in(crossing.get_column("uid").to_list()))\
        .get_column("align_reason").ne("shared_text").all()


def test_new_rows_join_the_previous_centroids(runs):
    work, _, old_uids = runs
    centroids = kmeans.centroid_matrix(artifact(work / "previous", "cluster")).astype(np.float64)
    embeddings = pl.from_arrow(pq.read_table(sorted((work / "pool" / "embeddings" / "b32").glob("part-*.parquet")),
                                             columns=["uid", "image_emb"]))
    _, new = split(output(work / "frozen", "cluster").join(embeddings, on="uid"), old_uids)
    vectors, _ = embedding_matrix(new.get_column("image_emb").to_arrow(), "image_emb")
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (new.get_column("cluster_id").to_numpy() == (vectors @ centroids.T).argmax(axis=1)).all()


def test_new_rows_are_deduplicated_against_the_previously_kept_rows(runs):
    work, _, old_uids = runs
    cluster = output(work / "frozen", "cluster")
    frozen = output(work / "frozen", "semdedup").join(cluster, on="uid")
    embeddings = pl.from_arrow(pq.read_table(sorted((work / "pool" / "embeddings" / "b32").glob("part-*.parquet")),
                                             columns=["uid", "image_emb"]))
    frame = frozen.join(embeddings, on="uid").filter(pl.col("cluster_id").is_not_null())
    vectors, _ = embedding_matrix(frame.get_column("image_emb").to_arrow(), "image_emb")
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    uids, is_old = frame.get_column("uid").to_list(), frame.get_column("uid").is_in(list(old_uids)).to_numpy()
    keep, duplicate_of = frame.get_column("semdedup_keep").to_list(), frame.get_column("semdedup_duplicate_of").to_list()
    checked = 0
    for cluster_id in set(frame.get_column("cluster_id").to_list()):
        members = np.flatnonzero(frame.get_column("cluster_id").to_numpy() == cluster_id)
        order = sorted(members, key=lambda i: (frame.get_column("cluster_sim")[int(i)], uids[i]))
        old = [i for i in order if is_old[i]]
        # the previous run's eps for this cluster: relative_eps x median nearest-neighbour distance of its old members
        sims = vectors[old] @ vectors[old].T
        np.fill_diagonal(sims, -np.inf)
        eps = max(1e-6, 0.5 * float(np.median(1.0 - sims.max(axis=1).astype(np.float64)))) if len(old) > 1 else 1e-6
        earlier = [i for i in old if keep[i]]
        for j in [i for i in order if not is_old[i]]:
            match = next((i for i in earlier if vectors[i] @ vectors[j] > np.float32(1 - eps)), None)
            assert keep[j] == (match is None) and duplicate_of[j] == (None if match is None else uids[match])
            earlier.append(j)
            checked += 1
    assert checked == 160
    planted = frame.filter(~pl.col("uid").is_in(list(old_uids)) & ~pl.col("semdedup_keep"))
    assert planted.height >= PLANTED - 2 and planted.get_column("semdedup_duplicate_of").is_in(list(old_uids)).all()


def test_new_rows_are_pruned_at_the_previous_cut_off_distance(runs):
    work, _, old_uids = runs
    previous = output(work / "previous", "dbp").filter(pl.col("dbp_keep"))
    cutoff = {cluster: (sim, uid) for cluster, sim, uid in previous.sort(["dbp_cluster_sim", "uid"])
              .group_by("dbp_cluster_id").agg(pl.col("dbp_cluster_sim").last(), pl.col("uid").last()).iter_rows()}
    frozen = output(work / "frozen", "dbp").join(output(work / "frozen", "semdedup"), on="uid")
    _, new = split(frozen, old_uids)
    for uid, cluster, sim, keep, deduplicated in new.select("uid", "dbp_cluster_id", "dbp_cluster_sim", "dbp_keep",
                                                            "semdedup_keep").iter_rows():
        assert keep == bool(deduplicated and cluster in cutoff and (sim, uid) <= cutoff[cluster])
    assert 0 < new.get_column("dbp_keep").sum() < new.height


def test_new_rows_meet_the_previous_target_clusters(runs):
    work, recipe, old_uids = runs
    from curate.stages import image_based

    cfg = next(cfg for stage, cfg in recipe.stages if stage.name == "image_based")
    rows = pq.read_table(work / "pool" / "00000002.parquet", columns=["uid", "text"])
    emb = pq.read_table(work / "pool" / "embeddings" / "b32" / "part-00002.parquet", columns=["image_emb"])
    expected = image_based.apply(rows.append_column("image_emb", emb.column("image_emb")), cfg,
                                 artifact(work / "previous", "image_based"))
    _, new = split(output(work / "frozen", "image_based"), old_uids)
    ordered = pl.from_arrow(pa.table({"uid": rows.column("uid"), **{n: expected.column(n) for n in expected.column_names}}))
    assert new.equals(ordered.sort("uid"))


def test_the_frozen_subset_is_the_previous_subset_plus_new_rows(runs):
    work, _, old_uids = runs
    before = set(np.load(work / "previous" / "subset.npy").tolist())
    after = set(np.load(work / "frozen" / "subset.npy").tolist())
    old_pairs = set(uid_pairs(sorted(old_uids)).tolist())
    assert after & old_pairs == before and len(after) > len(before)
    report = json.loads((work / "frozen" / "report.json").read_text())
    assert report["frozen"] == {"from": str(work / "previous"), "stages": sorted(FITTED), "refitted": []}
    assert json.loads((work / "refit" / "report.json").read_text())["frozen"] is None


def test_a_frozen_run_killed_midway_resumes_with_the_same_result(runs, caplog):
    work, recipe, _ = runs
    resumed = work / "resumed"
    shutil.copytree(work / "frozen", resumed)
    shutil.rmtree(resumed / "semdedup")  # killed before semdedup started ...
    dbp = json.loads((resumed / "dbp" / "_manifest.json").read_text())
    (resumed / "dbp" / "_manifest.json").write_text(json.dumps({**dbp, "status": "running"}))
    (resumed / "dbp" / "part-00001.parquet").unlink()  # ... or dbp midway, its frozen artifact installed
    (resumed / "dbp" / "_done" / "part-00001.json").unlink()
    caplog.set_level("INFO")
    pipeline.run_recipe(recipe, work / "pool", resumed, workers=1, frozen=work / "previous")
    assert "cluster: complete" in caplog.text and "semdedup: fit frozen from" in caplog.text
    for stage in ("semdedup", "dbp"):
        assert output(resumed, stage).equals(output(work / "frozen", stage))
        assert manifest(resumed, stage)["fit"]["mode"] == "frozen"
    assert (resumed / "subset.npy").read_bytes() == (work / "frozen" / "subset.npy").read_bytes()


def test_frozen_refuses_a_recipe_set_differently_before_any_stage_runs(runs, tmp_path):
    work, _, _ = runs
    mapping = recipe_mapping(work / "targets.npy")
    mapping["stages"]["score"]["fraction"] = 0.4
    with pytest.raises(RecipeError, match=r"score\.fraction: 0\.5 there, 0\.4 here"):
        pipeline.run_recipe(parse_recipe(mapping, "t"), work / "pool", tmp_path / "out", workers=1,
                            frozen=work / "previous")
    assert not any(path.is_dir() for path in (tmp_path / "out").iterdir())
    with pytest.raises(RecipeError, match="not a run directory"):
        pipeline.run_recipe(parse_recipe(recipe_mapping(work / "targets.npy"), "t"), work / "pool", tmp_path / "o2",
                            workers=1, frozen=work / "pool")
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe_mapping(work / "targets.npy")))
    assert main(["run", str(recipe_file), "--pool", str(work / "pool"), "--out", str(work / "previous"),
                 "--frozen", str(work / "previous")]) == 2


@pytest.mark.spark
def test_spark_freezes_like_the_local_engine(runs, spark, tmp_path):
    work, _, _ = runs
    mapping = recipe_mapping(work / "targets.npy")
    stages = {name: mapping["stages"][name] for name in ("score", "cluster", "semdedup", "dbp")}
    recipe = parse_recipe({"stages": stages, "select": "score_keep AND semdedup_keep AND dbp_keep"}, "t")
    pipeline.run_recipe(recipe, work / "pool", tmp_path / "spark", engine="spark", spark=spark,
                        frozen=work / "previous")
    for stage in stages:
        assert manifest(tmp_path / "spark", stage)["fit"]["mode"] == "frozen"
        columns = output(work / "frozen", stage).columns
        assert output(tmp_path / "spark", stage).select(columns).equals(output(work / "frozen", stage)), stage


def test_the_report_counts_a_frozen_dbp_in_this_pool(runs):
    work, _, _ = runs
    clusters = json.loads((work / "frozen" / "report.json").read_text())["dbp_clusters"]
    kept = output(work / "frozen", "dbp").filter(pl.col("dbp_keep")).get_column("dbp_cluster_id").value_counts()
    assert {c["cluster"]: c["kept"] for c in clusters if c["kept"]} == dict(kept.iter_rows())
    assert sum(c["size"] for c in clusters) == output(work / "frozen", "semdedup").get_column("semdedup_keep").sum()


def test_a_run_frozen_against_a_frozen_run_changes_nothing(runs, tmp_path):
    work, recipe, _ = runs
    pipeline.run_recipe(recipe, work / "pool", tmp_path / "again", workers=1, frozen=work / "frozen")
    for stage in FITTED:
        assert output(tmp_path / "again", stage).equals(output(work / "frozen", stage)), stage
    assert (tmp_path / "again" / "subset.npy").read_bytes() == (work / "frozen" / "subset.npy").read_bytes()
