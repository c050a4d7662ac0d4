"""Spark on a real cluster: a standalone master and two workers on loopback, started with the
scripts pyspark ships (curate.engines.standalone), `spark-submit --master spark://...` giving the
local engine's subset byte for byte, and an executor killed mid-stage (once: Spark's retry gives
the identical output; every attempt: the job stops with a clear error and nothing is written)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from curate import pipeline
from curate.engines import standalone
from curate.runio import read_manifest
from tests.helpers import table, write_pool

pytestmark = [pytest.mark.spark, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

SLOW_STAGE = '''
"""A per-row stage whose attempts on the pool's first shard announce themselves and wait,
so the test can kill the executor running one: the first attempt only, or every attempt."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Stage

MARKS = Path(os.environ["CURATE_TEST_MARKS"])


@dataclass(frozen=True, kw_only=True)
class LengthConfig:
    every_attempt: bool = False


def reads(cfg):
    return ("uid", "text")


def length(table, cfg, artifact):
    if MARKS.joinpath("first_uid").read_text() in table.column("uid").to_pylist():
        attempts = len(list(MARKS.glob("attempt-*")))
        if cfg.every_attempt or attempts == 0:
            MARKS.joinpath(f"attempt-{attempts}").write_text(str(os.getpid()))
            time.sleep(90)  # until the test kills this executor
    return pa.table({"text_chars": pc.fill_null(pc.utf8_length(table.column("text")), -1).cast(pa.int64())})


LENGTH = Stage(name="length", config=LengthConfig, reads=reads, adds=pa.schema([("text_chars", pa.int64())]),
               apply=length)
'''

DRIVER = '''
import sys
from curate import pipeline
from curate.engines.spark import get_spark

spark = get_spark(sys.argv[1])
spark.sparkContext.addPyFile(sys.argv[2])
import slow_stage

pipeline.run_stage(slow_stage.LENGTH, slow_stage.LengthConfig(every_attempt=sys.argv[5] == "1"),
                   sys.argv[3], sys.argv[4], engine="spark", spark=spark)
'''


def spark_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1", **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("spark-cluster")
    started = standalone.start(state, workers=2, cores_per_worker=1, memory_per_worker="1g", port=0, webui_port=0)
    try:
        yield started
    finally:
        assert standalone.stop(state)


def test_the_cluster_scripts_start_two_workers_and_stop_them(cluster):
    assert cluster.master_url.startswith("spark://127.0.0.1:")
    pids = [standalone.worker_pid(Path(cluster.state_dir), i) for i in (1, 2)]
    assert all(pid is not None and Path(f"/proc/{pid}").exists() for pid in pids)
    with pytest.raises(standalone.ClusterError, match="already recorded"):
        standalone.start(Path(cluster.state_dir), port=0, webui_port=0)


def test_spark_submit_to_the_cluster_gives_the_local_subset_byte_for_byte(cluster, tmp_path):
    pool = write_pool(tmp_path / "pool", [1500] * 8)
    local = subprocess.run([str(BIN / "curate"), "run", "jobs/recipes/filters.yaml", "--pool", str(pool),
                            "--out", str(tmp_path / "local")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    submitted = subprocess.run([str(BIN / "spark-submit"), "--master", cluster.master_url, "--executor-memory", "1g",
                                "jobs/run.py", "jobs/recipes/filters.yaml", "--pool", str(pool),
                                "--out", str(tmp_path / "cluster")],
                               cwd=ROOT, env=spark_env(), capture_output=True, text=True, timeout=600)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert (tmp_path / "cluster" / "subset.npy").read_bytes() == (tmp_path / "local" / "subset.npy").read_bytes()
    for stage in ("basic", "laion2b", "align", "metaclip"):
        assert read_manifest(tmp_path / "cluster" / stage)["engine"] == "spark"
    # both workers ran executors for the application
    assert all(list((Path(cluster.state_dir) / "work" / f"worker-{i}").glob("app-*")) for i in (1, 2))


def _executor_of(pid: int) -> int:
    """The executor JVM a Python worker process descends from."""
    while pid > 1:
        if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("the Python worker is not under an executor")


def _run_killing(cluster, tmp_path: Path, pool: Path, out: Path, every_attempt: bool, kills: int):
    marks = tmp_path / "marks"
    marks.mkdir()
    first = sorted(pool.glob("*.parquet"))[0]
    import pyarrow.parquet as pq

    (marks / "first_uid").write_text(pq.read_table(first, columns=["uid"]).column("uid")[0].as_py())
    (tmp_path / "slow_stage.py").write_text(textwrap.dedent(SLOW_STAGE))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    conf = ["--conf", f"spark.executorEnv.CURATE_TEST_MARKS={marks}"]  # executors do not inherit the driver's env
    conf += ["--conf", "spark.task.maxFailures=2"] if every_attempt else []
    driver = subprocess.Popen([str(BIN / "spark-submit"), "--master", cluster.master_url, "--executor-memory", "1g",
                               *conf, str(tmp_path / "driver.py"), cluster.master_url, str(tmp_path / "slow_stage.py"),
                               str(pool), str(out), "1" if every_attempt else "0"],
                              cwd=ROOT, env=spark_env(CURATE_TEST_MARKS=str(marks)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        for mark in sorted(marks.glob("attempt-*")):
            if mark.name not in killed and len(killed) < kills and mark.read_text():
                os.kill(_executor_of(int(mark.read_text())), signal.SIGKILL)  # mid-stage: the task is running
                killed.append(mark.name)
        time.sleep(0.2)
    stdout, stderr = driver.communicate(timeout=60)
    output = stderr + stdout  # spark-submit's Python runner sends the driver's stderr to stdout
    return driver.returncode, "\n".join(line for line in output.splitlines() if not line.startswith("\tat ")), killed


def test_an_executor_killed_mid_stage_is_retried_to_the_identical_output(cluster, tmp_path, monkeypatch):
    pool = write_pool(tmp_path / "pool", [300] * 6)
    code, stderr, killed = _run_killing(cluster, tmp_path, pool, tmp_path / "cluster", every_attempt=False, kills=1)
    assert code == 0, stderr[-3000:]
    assert killed == ["attempt-0"] and "Lost executor" in stderr  # the kill landed while the task ran
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CURATE_TEST_MARKS", str(tmp_path / "marks"))
    module = importlib.import_module("slow_stage")
    try:
        pipeline.run_stage(module.LENGTH, module.LengthConfig(), pool, tmp_path / "local", engine="local", workers=1)
    finally:
        sys.modules.pop("slow_stage", None)
    assert table(tmp_path / "cluster", "length").equals(table(tmp_path / "local", "length"))
    assert read_manifest(tmp_path / "cluster" / "length")["status"] == "complete"


def test_an_executor_that_dies_on_every_attempt_stops_the_job_with_a_clear_error(cluster, tmp_path):
    pool = write_pool(tmp_path / "pool", [300] * 6)
    out = tmp_path / "cluster"
    code, stderr, killed = _run_killing(cluster, tmp_path, pool, out, every_attempt=True, kills=2)
    assert code != 0 and killed == ["attempt-0", "attempt-1"]
    assert "stage length (apply): Spark gave up on the job after its task retries" in stderr, stderr[-3000:]
    assert "failed 2 times" in stderr
    assert not list((out / "length").glob("part-*.parquet"))  # nothing written
    assert read_manifest(out / "length")["status"] == "running"
