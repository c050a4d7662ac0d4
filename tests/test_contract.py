"""The stage contract itself: a stage defined outside the package runs on every engine path with
identical output, the engines hold stages to the contract, and every shipped stage accepts empty
shards (0-row batches) in every fit pass and in apply."""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.contract import Fit, Pass, Stage
from curate.engines import groups
from curate.errors import StageError
from tests.helpers import jpeg, planted_embeddings, run, table, write_embedding_pool, write_pool

CUSTOM = '''
"""Two stages a user writes in their own module: a per-row stage with a fit, and a per-group stage."""
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Fit, Pass, Stage

TOTAL = pa.schema([("chars", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class ShareConfig:
    scale: float = 1.0


def reads(cfg):
    return ("text",)


def total_chars(table, cfg, previous):
    return pa.table({"chars": [int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0)]}, schema=TOTAL)


def keep_total(merged, cfg, previous):
    return merged


def share(table, cfg, artifact):
    total = artifact.column("chars")[0].as_py()
    chars = pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return pa.table({"share_chars": chars, "share_of_pool": chars * cfg.scale / max(total, 1)})


SHARE = Stage(name="share", config=ShareConfig, reads=reads,
              adds=pa.schema([("share_chars", pa.int64()), ("share_of_pool", pa.float64())]), apply=share,
              fit=Fit(passes=(Pass("total", TOTAL, (), total_chars, keep_total),)))


@dataclass(frozen=True, kw_only=True)
class LongestConfig:
    bucket: int = 10


def longest_reads(cfg):
    return ("uid", "text")


def length_bucket(table, cfg, artifact):
    return pc.divide(pc.utf8_length(table.column("text")), cfg.bucket).cast(pa.int64())


def longest(table, cfg, artifact):
    lengths = pc.fill_null(pc.utf8_length(table.column("text")), -1).to_numpy(zero_copy_only=False)
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    keep = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows and (lengths >= 0).any():
        order = np.lexsort((uids, -lengths))
        keep[order[0]] = lengths[order[0]] >= 0
    return pa.table({"longest_keep": keep})


LONGEST = Stage(name="longest", config=LongestConfig, reads=longest_reads,
                adds=pa.schema([("longest_keep", pa.bool_())]), apply=longest, group_by=length_bucket)
'''


@pytest.fixture
def custom(tmp_path, monkeypatch):
    """The user's module, importable from its own folder (as `spark-submit --py-files` makes it)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_stages.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("my_stages", None)
    yield importlib.import_module("my_stages"), folder / "my_stages.py"
    sys.modules.pop("my_stages", None)


def _run(stage, cfg, pool, out, engine="local", spark=None, workers=2):
    return pipeline.run_stage(stage, cfg, pool, out, engine=engine, workers=workers, spark=spark)


def test_a_stage_outside_the_package_runs_on_the_local_engine_and_group_path(custom, tmp_path, monkeypatch):
    module, _ = custom
    pool = write_pool(tmp_path / "pool", [40, 0, 35, 25])
    one = _run(module.SHARE, module.ShareConfig(scale=2.0), pool, tmp_path / "one", workers=1)
    two = _run(module.SHARE, module.ShareConfig(scale=2.0), pool, tmp_path / "two", workers=2)  # spawned workers
    assert one["rows"] == two["rows"] == 100 and table(tmp_path / "one", "share").equals(table(tmp_path / "two", "share"))
    texts = pq.read_table(sorted(pool.glob("*.parquet"))).column("text").to_pylist()
    shares = table(tmp_path / "one", "share").column("share_of_pool").to_numpy()
    assert shares.sum() == pytest.approx(2.0)  # every caption's share of the pool's characters, scaled
    assert sum(table(tmp_path / "one", "share").column("share_chars").to_pylist()) == sum(len(t) for t in texts)
    monkeypatch.setattr(groups, "BUCKET_BYTES", 1)  # one bucket per group at least: more buckets than workers
    _run(module.LONGEST, module.LongestConfig(), pool, tmp_path / "groups", workers=2)
    _run(module.LONGEST, module.LongestConfig(), pool, tmp_path / "groups1", workers=1)
    longest = table(tmp_path / "groups", "longest")
    assert longest.equals(table(tmp_path / "groups1", "longest"))
    buckets = {len(t) // 10 for t in texts}
    assert sum(longest.column("longest_keep").to_pylist()) == len(buckets)  # one kept per group
    assert not (tmp_path / "groups" / "longest" / groups.SHUFFLE).exists()


@pytest.mark.spark
def test_the_same_custom_stages_on_spark_give_identical_output(custom, tmp_path, spark):
    module, path = custom
    spark.sparkContext.addPyFile(str(path))  # what `spark-submit --py-files my_stages.py` does
    pool = write_pool(tmp_path / "pool", [40, 0, 35, 25])
    for stage, cfg in ((module.SHARE, module.ShareConfig()), (module.LONGEST, module.LongestConfig())):
        _run(stage, cfg, pool, tmp_path / "local", workers=2)
        _run(stage, cfg, pool, tmp_path / "spark", engine="spark", spark=spark)
        assert table(tmp_path / "spark", stage.name).equals(table(tmp_path / "local", stage.name)), stage.name


def _bad_stage(apply, fit=None, describe=None) -> Stage:
    return Stage(name="bad", config=Cfg, reads=_reads, adds=pa.schema([("bad_value", pa.int64())]), apply=apply,
                 fit=fit, describe=describe)


@dataclass(frozen=True)
class Cfg:
    pass


def _reads(cfg):
    return ("text",)


def _short(table, cfg, artifact):
    return pa.table({"bad_value": np.zeros(max(0, table.num_rows - 1), np.int64)})


def _undeclared(table, cfg, artifact):
    return pa.table({"other": np.zeros(table.num_rows, np.int64)})


def _zero(table, cfg, artifact):
    return pa.table({"bad_value": np.zeros(table.num_rows, np.int64)})


def _wrong_partial(table, cfg, previous):
    return pa.table({"rows": [1], "extra": [2]})


def _reserved(cfg):
    return {"fingerprint": "mine"}


@pytest.mark.parametrize("stage, message", [
    (_bad_stage(_short), "apply returned 39 rows for 40"),
    (_bad_stage(_undeclared), r"did not return its declared column\(s\) \['bad_value'\]"),
    (_bad_stage(_zero, fit=Fit(passes=(Pass("count", pa.schema([("rows", pa.int64())]), (), _wrong_partial, None),))),
     r"partial of fit pass 'count' returned columns \['rows', 'extra'\], declared \['rows'\]"),
])
def test_the_engine_holds_stages_to_the_contract(stage, message, tiny_pool, tmp_path):
    with pytest.raises(StageError, match=message):
        _run(stage, Cfg(), tiny_pool, tmp_path / "out", workers=1)


def test_describe_may_not_overwrite_reserved_manifest_keys(tiny_pool, tmp_path):
    with pytest.raises(RuntimeError, match=r"reserved manifest keys \['fingerprint'\]"):
        _run(_bad_stage(_zero, describe=_reserved), Cfg(), tiny_pool, tmp_path / "out", workers=1)


def _everything_pool(directory: Path) -> Path:
    """Shards of 0, 30 and 0 rows with captions, sizes, scores, image bytes and a b32 sidecar."""
    vectors = planted_embeddings(30, dim=8, duplicates=4)
    write_embedding_pool(directory, [0, 30, 0], vectors)
    for path in sorted(directory.glob("*.parquet")):
        shard = pq.read_table(path)
        scores = np.linspace(0.1, 0.4, shard.num_rows).astype(np.float32)
        shard = shard.append_column("clip_l14_similarity_score", pa.array(scores))
        shard = shard.append_column("jpg", pa.array([jpeg(i) for i in range(shard.num_rows)], pa.binary()))
        pq.write_table(shard, path)
    np.save(directory.parent / "targets.npy", vectors[:3].astype(np.float32))
    return directory


EVERY_STAGE = {
    "basic": {}, "laion2b": {"score_column": None}, "align": {}, "text_based": {},
    "metaclip": {"metadata": "demo_concepts.txt", "t": 5}, "score": {},
    "embed": {"batch_size": 4, "pretrained": "random"}, "cluster": {"clusters": 3}, "semdedup": {"eps": 0.05},
    "dbp": {"keep_fraction": 0.5, "clusters": 2, "neighbours": 1},
}


def test_every_stage_accepts_empty_shards_in_every_pass_and_in_apply(tmp_path):
    pool = _everything_pool(tmp_path / "pool")
    out = tmp_path / "out"
    for name, values in EVERY_STAGE.items():
        run(name, pool, out, workers=1, **values)
    run("image_based", pool, out, workers=1, embeddings="b32", clusters=3, targets=str(tmp_path / "targets.npy"))
    for name in [*EVERY_STAGE, "image_based", "metaclip_match"]:
        parts = sorted((out / name).glob("part-*.parquet"))
        assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [0, 30, 0], name


def test_a_pool_of_empty_shards_clusters_and_dedups_to_empty_outputs(tmp_path):
    pool = write_embedding_pool(tmp_path / "pool", [0, 0], np.zeros((0, 8)))
    for name, values in (("cluster", {"clusters": 3}), ("semdedup", {}), ("dbp", {"keep_fraction": 0.5})):
        assert run(name, pool, tmp_path / "out", workers=1, **values)["rows"] == 0, name
