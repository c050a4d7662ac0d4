"""Storage that fails under a run: a disk that fills during a stage (a real tmpfs of a few hundred KB),
and a pool shard rewritten or deleted while a stage reads the pool."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.cli import main
from curate.contract import Stage
from curate.errors import PoolError
from curate.runio import read_manifest
from tests.helpers import write_pool


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KB tmpfs: the kernel's own 'No space left on device', not a simulation."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_disk_that_fills_mid_stage_names_the_file_keeps_nothing_half_and_resumes_when_freed(
        small_disk, tmp_path, capsys, caplog):
    pool = write_pool(tmp_path / "pool", [3000] * 4)
    args = ["run", "jobs/recipes/filters.yaml", "--pool", str(pool), "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "roomy")]) == 0

    out = small_disk / "run"
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "no space left on device while writing it" in error and f"{out}/" in error
    assert "re-run the command" in error
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # nothing half written
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")}
    assert finished  # the stage(s) before the disk filled

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    with caplog.at_level(logging.INFO):
        assert main([*args, "--out", str(out)]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # kept, not redone
    assert any("complete from an earlier run" in r.getMessage() for r in caplog.records)
    assert (out / "subset.npy").read_bytes() == (tmp_path / "roomy" / "subset.npy").read_bytes()


@dataclass(frozen=True)
class MeddleConfig:
    flag: str = ""       # while this file exists, the stage alters the pool once (then removes the flag)
    victim: str = ""     # the pool shard it alters
    delete: bool = False


def meddle_reads(cfg):
    return ("text",)


def meddle_apply(table, cfg, artifact):
    """Another process altering the pool while the stage runs: the shard it is reading (the last one)."""
    flag = Path(cfg.flag)
    if flag.exists() and any(text and "number 119" in text for text in table.column("text").to_pylist()):
        victim = Path(cfg.victim)
        if cfg.delete:
            victim.unlink()
        else:
            pq.write_table(pq.read_table(victim).slice(0, 5), victim)
        flag.unlink()
    return pa.table({"meddle_ok": np.ones(table.num_rows, bool)})


MEDDLE = Stage(name="meddle", config=MeddleConfig, reads=meddle_reads,
               adds=pa.schema([("meddle_ok", pa.bool_())]), apply=meddle_apply)


@pytest.mark.parametrize("delete", [False, True], ids=["rewritten", "deleted"])
@pytest.mark.parametrize("engine", ["local", pytest.param("spark", marks=pytest.mark.spark)])
def test_a_shard_altered_while_a_stage_runs_stops_it_and_the_rerun_uses_the_pool_as_it_is(
        engine, delete, tmp_path, caplog, request):
    pool = write_pool(tmp_path / "pool", [40, 40, 40])  # "number 119" is in the last shard
    flag = tmp_path / "flag"
    flag.touch()
    cfg = MeddleConfig(flag=str(flag), victim=str(pool / "00002.parquet"), delete=delete)
    spark = request.getfixturevalue("spark") if engine == "spark" else None
    if spark is not None:
        spark.sparkContext.addPyFile(__file__)  # the stage's module, as `spark-submit --py-files` ships it
    out = tmp_path / "out"
    what = "disappeared" if delete else "changed"
    with pytest.raises(PoolError, match=rf"00002.parquet: pool shard {what} while stage meddle ran"):
        pipeline.run_stage(MEDDLE, cfg, pool, out, engine=engine, workers=1, spark=spark)
    assert read_manifest(out / "meddle")["status"] == "running"

    with caplog.at_level(logging.INFO):
        manifest = pipeline.run_stage(MEDDLE, cfg, pool, out, engine=engine, workers=1, spark=spark)
    assert manifest["status"] == "complete"
    assert manifest["rows"] == (80 if delete else 85)  # the pool as it is now, nothing reused from before
    assert any("recomputing" in r.getMessage() for r in caplog.records)
