"""import-datacomp --link-embeddings (curate.npzlinks): the npz arrays read in place give the same
stage outputs as copied ones on both engines, the import adds a small fraction of the npz bytes,
compressed members fall back to copying, and an npz changed after the import is named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import npzlinks, pipeline
from curate.demo.synthetic import write_datacomp_pool
from curate.errors import PoolError
from curate.recipe import parse_recipe
from curate.steps.datacomp import import_datacomp

RECIPE = {"stages": {"score": {"embeddings": "l14", "score_column": None, "fraction": 0.5},
                     "cluster": {"embeddings": "b32", "clusters": 4},
                     "semdedup": {"embeddings": "b32", "eps": None, "relative_eps": 0.5}},
          "select": "score_keep AND semdedup_keep"}


def size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    work = tmp_path_factory.mktemp("links")
    source = write_datacomp_pool(work / "src", shards=3, rows_per_shard=400, seed=4)
    import_datacomp(source, work / "copied")
    import_datacomp(source, work / "linked", link_embeddings=True)
    recipe = parse_recipe(RECIPE, "t")
    pipeline.run_recipe(recipe, work / "copied", work / "copied_run", workers=1)
    pipeline.run_recipe(recipe, work / "linked", work / "linked_run", workers=2)
    return work, recipe


def test_linked_embeddings_are_read_in_place_and_give_the_same_run(pools):
    work, _ = pools
    for model in ("b32", "l14"):
        sidecar = work / "linked" / "embeddings" / model
        assert not list(sidecar.glob("part-*.parquet")) and len(npzlinks.links(sidecar)) == 3
        for part in npzlinks.part_names(sidecar):
            copied = pq.read_table(work / "copied" / "embeddings" / model / f"{part}.parquet")
            assert npzlinks.read_part(sidecar, part, ["uid", "image_emb", "text_emb"]).equals(copied)
    for stage in ("score", "cluster", "semdedup"):
        assert pq.read_table(work / "linked_run" / stage).equals(pq.read_table(work / "copied_run" / stage)), stage
    assert (work / "linked_run" / "subset.npy").read_bytes() == (work / "copied_run" / "subset.npy").read_bytes()
    npz_bytes = sum(path.stat().st_size for path in (work / "src").glob("*.npz"))
    assert size(work / "linked") < 0.10 * npz_bytes < size(work / "copied")


@pytest.mark.spark
def test_spark_reads_linked_embeddings_like_copied_ones(pools, spark, tmp_path):
    work, recipe = pools
    pipeline.run_recipe(recipe, work / "linked", tmp_path / "spark", engine="spark", spark=spark)
    assert (tmp_path / "spark" / "subset.npy").read_bytes() == (work / "copied_run" / "subset.npy").read_bytes()


def test_a_compressed_npz_is_copied_and_the_rest_linked(tmp_path, caplog):
    source = write_datacomp_pool(tmp_path / "src", shards=2, rows_per_shard=50, seed=1, models=("b32",))
    with np.load(source / "00000001.npz") as arrays:
        np.savez_compressed(source / "00000001.npz", **{name: arrays[name] for name in arrays.files})
    import_datacomp(source, tmp_path / "pool", link_embeddings=True)
    sidecar = tmp_path / "pool" / "embeddings" / "b32"
    assert sorted(npzlinks.links(sidecar)) == ["part-00000"] and (sidecar / "part-00001.parquet").is_file()
    assert "compressed or not C-ordered float16: copying them" in caplog.text
    assert npzlinks.part_names(sidecar) == ["part-00000", "part-00001"]


def test_an_npz_changed_after_the_import_is_named(tmp_path):
    source = write_datacomp_pool(tmp_path / "src", shards=1, rows_per_shard=60, seed=3, models=("b32",))
    import_datacomp(source, tmp_path / "pool", link_embeddings=True)
    with np.load(source / "00000000.npz") as arrays:
        changed = {name: arrays[name][::-1].copy() for name in arrays.files}
    np.savez(source / "00000000.npz", **changed)
    recipe = parse_recipe({"stages": {"score": RECIPE["stages"]["score"] | {"embeddings": "b32"}},
                           "select": "score_keep"}, "t")
    with pytest.raises(PoolError, match=r"00000000\.npz: changed since it was linked"):
        pipeline.run_recipe(recipe, tmp_path / "pool", tmp_path / "run", workers=1)
    shutil.rmtree(tmp_path / "run")
    (source / "00000000.npz").unlink()
    with pytest.raises(PoolError, match=r"00000000\.npz"):
        pipeline.run_recipe(recipe, tmp_path / "pool", tmp_path / "run", workers=1)
