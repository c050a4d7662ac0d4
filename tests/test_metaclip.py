"""The MetaCLIP stage (curate.stages.metaclip): pool-wide counts, balancing, uid-hashed sampling, engines."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.contract import make_config
from curate.errors import RecipeError
from curate.kernels.balancing import keep_probability, sampling_probabilities
from curate.recipe import parse_recipe
from curate.stages.metaclip import STAGE, MetaclipConfig
from curate.stages.metaclip_match import STAGE as MATCH
from curate.stages.metaclip_match import MetaclipMatchConfig
from curate.uid import derive_uid
from tests.helpers import fit_in_memory, write_pool

ENTRIES = ["photo", "dog", "cat", "red car", "sunset", "zebra"]


@pytest.fixture
def metadata(tmp_path: Path) -> str:
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(ENTRIES))
    return str(path)


def pool(texts: list[str | None]) -> pa.Table:
    return pa.table({"uid": [derive_uid(f"http://x/{i}", t) for i, t in enumerate(texts)],
                     "text": pa.array(texts, pa.string())})


def matched(batch: pa.Table, cfg: MetaclipConfig) -> pa.Table:
    """The batch with the metaclip_match stage's column, as the engine hands it to metaclip."""
    entries = MATCH.checked_apply(batch, MetaclipMatchConfig(metadata=cfg.metadata), None).column("metaclip_entries")
    return batch.append_column("metaclip_entries", entries)


def fit(batches: list[pa.Table], cfg: MetaclipConfig) -> pa.Table:
    """What every engine does: partial per batch, group-by-key sum, finalize."""
    return fit_in_memory(STAGE, cfg, [matched(batch, cfg) for batch in batches])


def run(table: pa.Table, cfg: MetaclipConfig, batch_rows: int | None = None) -> tuple[pa.Table, pa.Table]:
    """(artifact, uid + metaclip_entries + the balancing columns) over the table cut in batches."""
    step = batch_rows or max(table.num_rows, 1)
    batches = [matched(table.slice(start, step), cfg) for start in range(0, max(table.num_rows, 1), step)]
    artifact = fit_in_memory(STAGE, cfg, batches)
    outputs = [STAGE.checked_apply(batch, cfg, artifact).add_column(1, "metaclip_entries", batch.column("metaclip_entries"))
               for batch in batches]
    return artifact, pa.concat_tables(outputs)


def test_counts_are_pool_wide_whatever_the_batching(metadata):
    texts = ["a photo of a dog", "dog", "a red car at sunset", None, "", "Dog photo.", "photo photo"] * 7
    cfg = MetaclipConfig(metadata=metadata, t=3)
    artifact, whole = run(pool(texts), cfg)
    assert artifact.column("count").to_pylist() == [21, 14, 0, 7, 7, 0]
    assert artifact.column("entry").to_pylist() == ENTRIES
    assert artifact.column("p").to_pylist() == [3 / 21, 3 / 14, 1.0, 3 / 7, 3 / 7, 1.0]
    for batch_rows in (1, 4, 10):
        other_artifact, other = run(pool(texts), cfg, batch_rows)
        assert other_artifact.equals(artifact) and other.equals(whole)


def test_probabilities_and_keep_probability_by_hand():
    p = sampling_probabilities(np.array([0, 5, 40, 10]), 10)
    assert p.tolist() == [1.0, 1.0, 0.25, 1.0]
    matches = pa.array([[2], [], [1, 2], [2, 3]], pa.list_(pa.int32()))
    p = np.array([1.0, 0.5, 0.25, 0.1])
    assert keep_probability(matches, p).tolist() == pytest.approx([0.25, 0.0, 1 - 0.5 * 0.75, 1 - 0.75 * 0.9])
    assert keep_probability(matches.slice(1, 2), p).tolist() == pytest.approx([0.0, 0.625])
    assert keep_probability(pa.array([[], []], pa.list_(pa.int32())), p).tolist() == [0.0, 0.0]


def test_columns_and_reasons(metadata):
    texts = ["a photo of a dog", None, "nothing here", "", "zebra", "zebra"]
    _, out = run(pool(texts), MetaclipConfig(metadata=metadata, t=1))
    assert out.column_names == ["uid", "metaclip_entries", "metaclip_keep", "metaclip_reason", "metaclip_p"]
    assert out.column("metaclip_entries").to_pylist() == [[0, 1], None, [], [], [5], [5]]  # null: no caption
    assert out.column("metaclip_p").to_pylist() == [1.0, 0.0, 0.0, 0.0, 0.5, 0.5]
    reasons = out.column("metaclip_reason").to_pylist()
    assert reasons[:4] == [None, "no_text", "no_match", "no_match"]
    keep = out.column("metaclip_keep").to_pylist()
    assert keep[:4] == [True, False, False, False]
    assert reasons[4:] == [None if k else "not_sampled" for k in keep[4:]]


def test_selection_rate_per_entry_is_min_1_t_over_count(tmp_path):
    # each caption matches exactly one entry, so its keep probability is that entry's p
    counts = {"alpha": 20000, "beta": 5000, "gamma": 1000, "delta": 400, "eps": 150}
    path = tmp_path / "entries.txt"
    path.write_text("\n".join(counts) + "\n")
    t = 400
    texts = [f"{word} number{i}" for word, n in counts.items() for i in range(n)]
    _, out = run(pool(texts), MetaclipConfig(metadata=str(path), t=t), batch_rows=7000)
    keep = np.asarray(out.column("metaclip_keep").to_numpy(zero_copy_only=False))
    start = 0
    for word, n in counts.items():
        p = min(1.0, t / n)
        rate = keep[start:start + n].mean()
        start += n
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(rate - p) <= 4 * sigma + 1e-12, (word, rate, p)
    kept = keep.sum()
    assert abs(kept - (400 + 400 + 400 + 400 + 150)) < 4 * math.sqrt(400 * 3)


def test_two_entries_combine_as_one_minus_product(tmp_path):
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(["a", "b"]))
    texts = ["a b"] * 3000 + ["a"] * 7000 + ["b"] * 1000  # count a = 10000, b = 4000
    _, out = run(pool(texts), MetaclipConfig(metadata=str(path), t=1000))
    keep = np.asarray(out.column("metaclip_keep").to_numpy(zero_copy_only=False))[:3000]
    p = 1 - (1 - 0.1) * (1 - 0.25)
    assert abs(keep.mean() - p) <= 4 * math.sqrt(p * (1 - p) / 3000)
    assert out.column("metaclip_p").to_pylist()[0] == pytest.approx(p)


def test_seed_changes_the_subset_and_batching_does_not(metadata):
    texts = [f"photo {i}" for i in range(2000)]
    _, first = run(pool(texts), MetaclipConfig(metadata=metadata, t=1000, seed=0))
    _, again = run(pool(texts), MetaclipConfig(metadata=metadata, t=1000, seed=0), batch_rows=300)
    _, other = run(pool(texts), MetaclipConfig(metadata=metadata, t=1000, seed=1))
    assert first.equals(again)
    keep, other_keep = (np.asarray(t.column("metaclip_keep").to_numpy(zero_copy_only=False)) for t in (first, other))
    assert 900 < keep.sum() < 1100 and 900 < other_keep.sum() < 1100 and (keep != other_keep).sum() > 500


def test_apply_refuses_missing_counts_and_matches_of_another_list(metadata, tmp_path):
    cfg = MetaclipConfig(metadata=metadata)
    with pytest.raises(RuntimeError, match="fitted"):
        STAGE.checked_apply(matched(pool(["dog"]), cfg), cfg, None)
    pool_dir = write_pool(tmp_path / "pool", [30])
    pipeline.run_stage("metaclip_match", MetaclipMatchConfig(metadata=metadata), pool_dir, tmp_path / "out", workers=1)
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps(ENTRIES + ["extra"]))
    with pytest.raises(RecipeError, match="matched another metadata list"):
        pipeline.run_stage(STAGE, MetaclipConfig(metadata=str(longer)), pool_dir, tmp_path / "out", workers=1)


def test_config_defaults_and_recipe(metadata):
    cfg = MetaclipConfig()
    assert cfg.t == 20000 and cfg.seed == 0 and cfg.metadata.endswith("metadata/entries.json.gz")
    assert set(dataclasses.asdict(cfg)) == {"metadata", "t", "tail_proportion", "seed"}
    recipe = parse_recipe({"seed": 7, "stages": {"metaclip": {}}, "select": "metaclip_keep"}, "r",
                          ["metaclip.t=5", f"metaclip.metadata={metadata}"])
    assert recipe.stage_names == ["metaclip_match", "metaclip"]
    assert recipe.stages[0][1] == MetaclipMatchConfig(metadata=metadata)
    assert recipe.stages[1][1] == MetaclipConfig(metadata=metadata, t=5, seed=7)
    with pytest.raises(RecipeError, match="threshold"):
        make_config(MetaclipConfig, {"threshold": 5}, "recipe.metaclip")
    with pytest.raises(RecipeError, match="t must be >= 1"):  # before any data is read
        parse_recipe({"stages": {"metaclip": {"t": 0}}, "select": "metaclip_keep"}, "r")


def run_metaclip(pool_dir: Path, out: Path, metadata: str, engine: str = "local", spark=None, workers: int = 2):
    """The matching, then the balancing: what a recipe's metaclip entry runs; the balancing's manifest."""
    recipe = parse_recipe({"stages": {"metaclip": {"metadata": metadata, "t": 20}}, "select": "metaclip_keep"}, "t")
    return [pipeline.run_stage(stage, cfg, pool_dir, out, engine=engine, workers=workers, spark=spark)
            for stage, cfg in recipe.stages][-1]


def stage_table(out: Path) -> pa.Table:
    """uid, metaclip_entries and the balancing's columns, by uid."""
    entries = pq.read_table(sorted((out / "metaclip_match").glob("part-*.parquet"))).sort_by("uid")
    decisions = pq.read_table(sorted((out / "metaclip").glob("part-*.parquet"))).sort_by("uid")
    assert entries.column("uid").equals(decisions.column("uid"))
    return decisions.add_column(1, "metaclip_entries", entries.column("metaclip_entries"))


@pytest.mark.spark
def test_local_and_spark_give_identical_decisions(tmp_path, spark, metadata):
    pool_dir = write_pool(tmp_path / "pool", [300, 0, 250, 450])
    run_metaclip(pool_dir, tmp_path / "local", metadata)
    run_metaclip(pool_dir, tmp_path / "spark", metadata, engine="spark", spark=spark)
    local, spark_out = stage_table(tmp_path / "local"), stage_table(tmp_path / "spark")
    assert spark_out.equals(local)
    keep = local.column("metaclip_keep").to_pylist()
    assert 0 < sum(keep) < len(keep)
    assert pq.read_table(tmp_path / "spark" / "metaclip" / "_artifact.parquet").equals(
        pq.read_table(tmp_path / "local" / "metaclip" / "_artifact.parquet"))


def test_non_utf8_captions_are_repaired_then_matched(tmp_path):
    pool_dir = write_pool(tmp_path / "pool", [3])
    table = pq.read_table(pool_dir / "00000.parquet")
    raw = pa.array([b"a bad \xff\xfe bytes here", b"\xc3", None], pa.binary())
    pq.write_table(table.set_column(2, "text", raw.view(pa.string())), pool_dir / "00000.parquet")
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(["bad", "bytes here", "\ufffd"]))
    run_metaclip(pool_dir, tmp_path / "out", str(path))
    out = stage_table(tmp_path / "out").to_pylist()
    by_text = {row["uid"]: row for row in out}
    rows = [by_text[uid] for uid in table.column("uid").to_pylist()]
    assert [r["metaclip_entries"] for r in rows] == [[0, 1], [2], None]
    assert [r["metaclip_reason"] for r in rows][2] == "no_text"


def test_editing_the_metadata_in_place_reruns_the_stage(tmp_path):
    pool_dir = write_pool(tmp_path / "pool", [40])
    metadata = tmp_path / "entries.txt"
    metadata.write_text("photo\nstar\n")
    first = run_metaclip(pool_dir, tmp_path / "out", str(metadata))
    metadata.write_text("photo\ncircle\n")  # same path, same length, other content
    second = run_metaclip(pool_dir, tmp_path / "out", str(metadata))
    assert first["fingerprint"] != second["fingerprint"]
    assert first["metadata_sha256"] != second["metadata_sha256"]
    output = pq.read_table(tmp_path / "out" / "metaclip_match" / "part-00000.parquet")  # row-aligned with the shard
    captions = pq.read_table(pool_dir / "00000.parquet").column("text").to_pylist()
    matched = [1 in ids for ids in output.column("metaclip_entries").to_pylist()]
    assert matched == [" circle " in f" {text} " for text in captions] and any(matched)


def test_each_caption_is_matched_once_and_the_balancing_matches_nothing(tmp_path, metadata, monkeypatch):
    """Matching is its own per-row stage: one match call per partition; counting and balancing read
    its column and never match (so Spark, which runs the same two stages, matches once too)."""
    from curate.kernels.metaclip_match import Matcher

    pool_dir = write_pool(tmp_path / "pool", [300, 0, 250, 450])
    calls = []
    original = Matcher.match
    monkeypatch.setattr(Matcher, "match", lambda self, texts: calls.append(len(texts)) or original(self, texts))
    recipe = parse_recipe({"stages": {"metaclip": {"metadata": metadata, "t": 20}}, "select": "metaclip_keep"}, "t")
    (match_stage, match_cfg), (stage, cfg) = recipe.stages
    pipeline.run_stage(match_stage, match_cfg, pool_dir, tmp_path / "out", workers=1)  # in this process
    assert sorted(calls) == [0, 250, 300, 450]
    monkeypatch.setattr(Matcher, "match", lambda self, texts: pytest.fail("the balancing matched captions"))
    pipeline.run_stage(stage, cfg, pool_dir, tmp_path / "out", workers=1)
    assert stage_table(tmp_path / "out").num_rows == 1000


def test_t_from_the_tail_proportion_is_metaclip2s_p_to_t(metadata):
    """p -> t by hand: counts [1, 2, 3, 10] have ascending shares 1/16, 3/16, 6/16, 1; p = 0.2 is
    nearest 3/16, so t = 2; t -> p gives back the share below t."""
    from curate.kernels.balancing import tail_proportion, threshold_for_tail

    assert threshold_for_tail(np.array([10, 0, 2, 1, 3]), 0.2) == 2
    assert tail_proportion(np.array([10, 0, 2, 1, 3]), 3) == pytest.approx(3 / 16)
    assert threshold_for_tail(np.array([0, 0]), 0.5) == 1 and threshold_for_tail(np.array([5, 5]), 0.01) == 5
    texts = ["photo"] * 10 + ["dog"] * 3 + ["cat"] * 2 + ["zebra"]
    artifact, _ = run(pool(texts), MetaclipConfig(metadata=metadata, t=None, tail_proportion=0.2))
    assert artifact.column("t")[0].as_py() == 2 and artifact.column("p").to_pylist()[0] == 0.2  # photo: 2/10
    with pytest.raises(RecipeError, match="exactly one of t and tail_proportion"):
        MetaclipConfig(metadata=metadata, tail_proportion=0.1)
