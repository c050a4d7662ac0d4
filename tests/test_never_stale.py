"""Never stale, never partial, never two at once, never destructive (issue 13): every input a stage
reads is in its fingerprint, a half-written pool is refused, a run directory has one owner,
damaged outputs are recomputed, and nothing curate did not write is deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.cli import main
from curate.errors import PoolError, ReshardError, RunDirError
from curate.kernels.embeddings import encode
from curate.outputs import directory_lock
from curate.pool import POOL_INFO
from curate.recipe import parse_recipe
from curate.steps.datacomp import import_datacomp
from curate.steps.reshard import reshard
from tests.helpers import (
    config,
    datacomp_pool,
    good_rows,
    planted_embeddings,
    table,
    write_embedding_pool,
    write_image_pool,
    write_pool,
)

BIN = Path(sys.executable).parent
RECIPE = {"stages": {"basic": {}, "metaclip": {"metadata": "METADATA", "t": 3},
                     "score": {"embeddings": "b32", "score_column": None, "fraction": 0.5}},
          "select": "basic_keep AND metaclip_keep AND score_keep"}


def recipe_run(pool: Path, out: Path, metadata: Path, **overrides) -> dict:
    mapping = json.loads(json.dumps(RECIPE).replace("METADATA", str(metadata)))
    for key, value in overrides.items():
        mapping["stages"][key].update(value)
    return pipeline.run_recipe(parse_recipe(mapping, "t"), pool, out, workers=1)


def written_at(out: Path) -> dict[str, str]:
    return {d.name: json.loads((d / "_manifest.json").read_text())["written_at"] + str((d / "_manifest.json").stat().st_mtime_ns)
            for d in sorted(out.iterdir()) if (d / "_manifest.json").is_file()}


@pytest.fixture
def setup(tmp_path):
    pool = write_embedding_pool(tmp_path / "pool", [30, 30], planted_embeddings(60, dim=8))
    metadata = tmp_path / "entries.txt"
    metadata.write_text("photo\nstar\nred\n")
    out = tmp_path / "out"
    recipe_run(pool, out, metadata)
    return pool, out, metadata


def rewritten(out: Path, before: dict[str, str]) -> set[str]:
    after = written_at(out)
    return {name for name in after if after[name] != before.get(name)}


def test_each_kind_of_input_change_recomputes_exactly_the_stages_downstream(setup, caplog):
    pool, out, metadata = setup
    before = written_at(out)
    recipe_run(pool, out, metadata)
    assert rewritten(out, before) == set()  # nothing changed: nothing rewritten

    before = written_at(out)
    metadata.write_text("photo\nstar\nblue\n")  # same size, in place
    with caplog.at_level("INFO"):
        recipe_run(pool, out, metadata)
    assert rewritten(out, before) == {"metaclip_match", "metaclip", "subset"}
    assert any(r.getMessage().startswith("metaclip_match: recomputing:") and "file metadata (entries.txt) changed"
               in r.getMessage() for r in caplog.records), caplog.text

    before = written_at(out)
    sidecar = pool / "embeddings" / "b32" / "part-00001.parquet"
    part = pq.read_table(sidecar)
    pq.write_table(part.set_column(2, "text_emb", encode(planted_embeddings(30, dim=8, seed=5))), sidecar)
    recipe_run(pool, out, metadata)
    assert rewritten(out, before) == {"score", "subset"}

    before = written_at(out)
    shard = pool / "00001.parquet"
    stat = shard.stat()
    rows = pq.read_table(shard)
    texts = rows.column("text").to_pylist()
    texts[0] = texts[0][::-1]  # same length: same size on disk is likely, mtime is restored below
    pq.write_table(rows.set_column(2, "text", pa.array(texts)), shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    recipe_run(pool, out, metadata)
    assert rewritten(out, before) == {"basic", "metaclip_match", "metaclip", "score", "subset"}


def test_image_based_targets_rewritten_in_place_recompute(tmp_path):
    source = datacomp_pool(tmp_path / "src")
    pool = tmp_path / "pool"
    import_datacomp(source, pool)
    targets = tmp_path / "targets.npy"
    with np.load(sorted(source.glob("*.npz"))[0]) as arrays:
        np.save(targets, arrays["l14_img"][:2].astype(np.float32))
    values = {"clusters": 12, "targets": str(targets)}
    recipe = parse_recipe({"stages": {"image_based": values}, "select": "image_based_keep"}, "t")
    first = pipeline.run_recipe(recipe, pool, tmp_path / "out", workers=1)["rows_out"]
    with np.load(sorted(source.glob("*.npz"))[0]) as arrays:
        np.save(targets, arrays["l14_img"][100:140].astype(np.float32))
    second = pipeline.run_recipe(recipe, pool, tmp_path / "out", workers=1)["rows_out"]
    fresh = pipeline.run_recipe(recipe, pool, tmp_path / "fresh", workers=1)["rows_out"]
    assert second == fresh != first


def test_import_into_an_existing_pool_verifies_skips_or_refuses(tmp_path):
    source = datacomp_pool(tmp_path / "src")
    pool = tmp_path / "pool"
    first = import_datacomp(source, pool)
    assert import_datacomp(source, pool) == first  # same files: kept
    shard = sorted(source.glob("*.parquet"))[0]
    table_ = pq.read_table(shard)
    texts = table_.column("text").to_pylist()
    texts[0] = "a changed caption"
    pq.write_table(table_.set_column(table_.schema.get_field_index("text"), "text", pa.array(texts)), shard)
    with pytest.raises(RunDirError, match="made from other files.*--overwrite"):
        import_datacomp(source, pool)
    import_datacomp(source, pool, overwrite=True)
    assert pq.read_table(pool / shard.name).column("text")[0].as_py() == "a changed caption"


def test_a_half_written_pool_is_refused_naming_what_is_missing(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool", [60, 60, 60, 60])
    (pool / POOL_INFO).write_text(json.dumps({"status": "writing", "command": "ingest"}))
    assert main(["basic", "--pool", str(pool), "--out", str(tmp_path / "out")]) == 2
    assert "incomplete pool: `curate ingest` did not finish" in capsys.readouterr().err
    files = {p.name: 60 for p in pool.glob("*.parquet")}
    (pool / POOL_INFO).write_text(json.dumps({"status": "complete", "shard_files": files}))
    (pool / "00003.parquet").unlink()  # a shard lost after the pool was written
    with pytest.raises(PoolError, match=r"its shards differ from _pool.json \(missing \['00003.parquet'\]"):
        pipeline.run_stage("basic", config("basic"), pool, tmp_path / "out", workers=1)


def test_a_second_run_on_the_same_directory_is_refused_with_the_holder(tiny_pool, tmp_path):
    out = tmp_path / "out"
    with directory_lock(out):
        result = subprocess.run([str(BIN / "curate"), "basic", "--pool", str(tiny_pool), "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"is in use by PID {os.getpid()}" in result.stderr, result.stderr
    assert main(["basic", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0  # released


def test_a_truncated_or_replaced_part_is_recomputed(tiny_pool, tmp_path):
    out = tmp_path / "out"
    assert main(["align", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0
    reference = table(out, "align")
    part = out / "align" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:100])  # truncated
    other = out / "align" / "part-00000.parquet"
    pq.write_table(pq.read_table(other).slice(0, 3), other)  # replaced by something else
    assert main(["align", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0
    assert table(out, "align").equals(reference)


def test_scratch_trees_are_gone_after_a_resumed_run(tmp_path):
    pool = write_embedding_pool(tmp_path / "pool", [20, 20], planted_embeddings(40, dim=8, duplicates=4))
    out = tmp_path / "out"
    for name, values in (("cluster", ["clusters=2"]), ("semdedup", [])):
        assert main([name, "--pool", str(pool), "--out", str(out), "--workers", "1",
                     *[a for v in values for a in ("--set", v)]]) == 0
    (out / "semdedup" / "_shuffle" / "in" / "00000").mkdir(parents=True)  # left by a killed shuffle
    (out / "semdedup" / ".part-00000.parquet.tmp-1-2").write_bytes(b"half")
    assert main(["semdedup", "--pool", str(pool), "--out", str(out), "--workers", "1"]) == 0
    assert not (out / "semdedup" / "_shuffle").exists() and not list((out / "semdedup").glob(".*tmp*"))


def test_ingest_refuses_a_folder_of_someone_elses_shards(tmp_path):
    from curate.steps.ingest import ingest

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:1/x.jpg,a caption\n")
    folder = write_pool(tmp_path / "theirs", [5])
    (folder / "00000000.parquet").write_bytes((folder / "00000.parquet").read_bytes())
    with pytest.raises(RunDirError, match="not empty and not a pool curate wrote"):
        ingest(urls, folder, processes=1, threads=2, timeout=1.0)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["00000.parquet", "00000000.parquet"]


def test_a_run_keeps_files_it_did_not_write_and_refuses_symlinks(tiny_pool, tmp_path):
    out = tmp_path / "out"
    assert main(["run", "jobs/recipes/basic.yaml", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0
    (out / "basic" / "notes.txt").write_text("mine")
    (out / "subset" / "thesis.tex").write_text("mine too")
    assert main(["run", "jobs/recipes/basic.yaml", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1",
                 "--set", "basic.min_side=100", "--set", "select=basic_keep AND status = 'success'"]) == 0
    assert (out / "basic" / "notes.txt").read_text() == "mine" and (out / "subset" / "thesis.tex").read_text() == "mine too"
    assert json.loads((out / "basic" / "_manifest.json").read_text())["config"]["min_side"] == 100
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "basic").symlink_to(elsewhere, target_is_directory=True)
    assert main(["basic", "--pool", str(tiny_pool), "--out", str(linked)]) == 2
    assert elsewhere.exists()
    someone = tmp_path / "someone"
    someone.mkdir()
    (someone / "thesis.tex").write_text("not curate's")
    assert main(["basic", "--pool", str(tiny_pool), "--out", str(someone)]) == 2
    assert (someone / "thesis.tex").read_text() == "not curate's"


def test_a_pickled_subset_npy_is_a_clear_error(tmp_path):
    pool = write_image_pool(tmp_path / "pool", [good_rows(3)])
    np.save(tmp_path / "subset.npy", np.array([{"uid": "x"}], dtype=object), allow_pickle=True)
    with pytest.raises(ReshardError, match="not a DataComp subset .npy"):
        reshard(tmp_path / "subset.npy", tmp_path / "shards", pool=pool, workers=1)
    assert not (tmp_path / "shards").exists()  # refused before anything is written


@pytest.mark.spark
def test_spark_repairs_invalid_utf8_like_the_local_engine(tmp_path, spark):
    pool = write_pool(tmp_path / "pool", [3, 3])
    shard = pq.read_table(pool / "00000.parquet")
    raw = pa.array([b"a bad \xff\xfe caption here", b"\xc3", None], pa.binary())
    pq.write_table(shard.set_column(2, "text", raw.view(pa.string())), pool / "00000.parquet")
    recipe = parse_recipe({"stages": {"basic": {}, "align": {}}, "select": "basic_keep OR align_keep"}, "t")
    pipeline.run_recipe(recipe, pool, tmp_path / "local", workers=1)
    pipeline.run_recipe(recipe, pool, tmp_path / "spark", engine="spark", spark=spark)
    for stage in ("basic", "align"):
        assert table(tmp_path / "spark", stage).equals(table(tmp_path / "local", stage)), stage


def test_the_pool_check_is_remembered_for_every_run_directory_until_a_shard_changes(tiny_pool, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_POOL_CHECK_CACHE", str(tmp_path / "checks"))
    rows = pipeline.check_pool(tiny_pool, tmp_path / "a")
    assert rows == 100 and len(list((tmp_path / "checks").glob("*.json"))) == 1
    calls = []
    monkeypatch.setattr(pipeline, "check_unique_uids", lambda pool: calls.append(pool) or rows)
    assert pipeline.check_pool(tiny_pool, tmp_path / "b") == rows and calls == []  # another run directory
    shard = tiny_pool / "00002.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)  # a shard changed: checked again
    pipeline.check_pool(tiny_pool, tmp_path / "c")
    assert calls == [tiny_pool]
    monkeypatch.setenv("CURATE_POOL_CHECK_CACHE", "/proc/no-such-place")  # cannot be written: a warning only
    assert pipeline.check_pool(tiny_pool, tmp_path / "d") == rows
