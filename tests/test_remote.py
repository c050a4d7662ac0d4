"""Pools and run directories on an object store (curate.remote), against a real S3-compatible server:
moto's server mode on 127.0.0.1, reached through pyarrow's own S3 filesystem."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate import remote
from curate.cli import main
from tests.helpers import write_pool

BUCKET = "curate-test"
RECIPE = "jobs/recipes/filters.yaml"


@pytest.fixture(scope="module")
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                  "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def upload(local: Path, url: str) -> None:
    """Put a local tree on the server with pyarrow's own copy (not the code under test)."""
    from pyarrow import fs

    s3, path = fs.FileSystem.from_uri(url)
    fs.copy_files(str(local), path, source_filesystem=fs.LocalFileSystem(), destination_filesystem=s3)


def read_remote(url: str) -> bytes:
    s3, path = remote.filesystem(url)
    with s3.open_input_stream(path) as stream:
        return stream.read()


def remote_names(url: str) -> set[str]:
    s3, path = remote.filesystem(url)
    return set(remote._remote_files(s3, path))


def run(*args: str) -> int:
    return main(["run", RECIPE, *args, "--workers", "1"])


def test_a_recipe_reads_an_s3_pool_and_writes_an_s3_run_identical_to_a_local_run(s3_server, cache, tmp_path, caplog):
    pool = write_pool(tmp_path / "pool", [60, 0, 45])
    upload(pool, f"{s3_server}/p1/pool")
    assert run("--pool", str(pool), "--out", str(tmp_path / "local")) == 0
    assert run("--pool", f"{s3_server}/p1/pool", "--out", f"{s3_server}/p1/run") == 0

    expected = (tmp_path / "local" / "subset.npy").read_bytes()
    assert read_remote(f"{s3_server}/p1/run/subset.npy") == expected
    names = remote_names(f"{s3_server}/p1/run")
    for stage in ("basic", "laion2b", "align", "metaclip_match", "metaclip"):
        assert f"{stage}/_manifest.json" in names and f"{stage}/_done/part-00000.json" in names
    assert {"report.json", "_run.json", "_curate.log", remote.INDEX} <= names
    assert ".curate.lock" not in names and not any(".tmp-" in name for name in names)

    # another machine (an empty cache) resumes the remote run: every stage is complete, nothing recomputed
    os.environ["CURATE_CACHE_DIR"] = str(tmp_path / "other-machine")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run("--pool", f"{s3_server}/p1/pool", "--out", f"{s3_server}/p1/run") == 0
    done = [r.getMessage() for r in caplog.records if ": done in " in r.getMessage()]
    assert len(done) == 5 and all("complete from an earlier run" in line for line in done), done
    assert read_remote(f"{s3_server}/p1/run/subset.npy") == expected


def test_a_shard_replaced_on_the_server_is_fetched_again_and_recomputed(s3_server, cache, tmp_path, caplog):
    pool = write_pool(tmp_path / "pool", [50, 40, 30])
    upload(pool, f"{s3_server}/p2/pool")
    assert run("--pool", f"{s3_server}/p2/pool", "--out", f"{s3_server}/p2/run") == 0
    assert "basic/part-00002.parquet" in remote_names(f"{s3_server}/p2/run")

    shrunk = pq.read_table(pool / "00001.parquet").slice(0, 10)
    pq.write_table(shrunk, pool / "00001.parquet")
    upload(pool, f"{s3_server}/p2/pool")
    (pool / "00002.parquet").unlink()  # and a shard deleted on the server
    s3, path = remote.filesystem(f"{s3_server}/p2/pool/00002.parquet")
    s3.delete_file(path)
    assert run("--pool", str(pool), "--out", str(tmp_path / "local")) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run("--pool", f"{s3_server}/p2/pool", "--out", f"{s3_server}/p2/run") == 0
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert not any("complete from an earlier run" in r.getMessage() for r in caplog.records)
    assert read_remote(f"{s3_server}/p2/run/subset.npy") == (tmp_path / "local" / "subset.npy").read_bytes()
    names = remote_names(f"{s3_server}/p2/run")  # the recomputed stages' old third part is gone there too
    assert "basic/part-00001.parquet" in names
    assert "basic/part-00002.parquet" not in names and "basic/_done/part-00002.json" not in names


def test_a_failed_run_still_uploads_what_it_finished_and_resumes_from_there(s3_server, cache, tmp_path, caplog):
    pool = write_pool(tmp_path / "pool", [60])
    upload(pool, f"{s3_server}/p3/pool")
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("max_removed_share: 0.01\nstages:\n  basic: {}\n  align: {}\nselect: basic_keep AND align_keep\n")
    args = ["run", str(recipe), "--pool", f"{s3_server}/p3/pool", "--out", f"{s3_server}/p3/run", "--workers", "1"]
    assert main([*args, "--strict"]) == 2  # basic removes rows: above max_removed_share 0.01
    names = remote_names(f"{s3_server}/p3/run")
    assert "basic/_manifest.json" in names and "basic/_done/part-00000.json" in names
    assert "align/_manifest.json" not in names

    os.environ["CURATE_CACHE_DIR"] = str(tmp_path / "other-machine")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    done = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if ": done in " in r.getMessage()}
    assert "complete from an earlier run" in done["basic"]
    assert "complete from an earlier run" not in done["align"]
    assert "align/_manifest.json" in remote_names(f"{s3_server}/p3/run")


@pytest.mark.spark
def test_the_spark_engine_curates_an_s3_pool_into_an_s3_run(s3_server, cache, tmp_path, spark):
    pool = write_pool(tmp_path / "pool", [70, 30])
    upload(pool, f"{s3_server}/p4/pool")
    assert run("--pool", str(pool), "--out", str(tmp_path / "local")) == 0
    assert main(["run", RECIPE, "--pool", f"{s3_server}/p4/pool", "--out", f"{s3_server}/p4/run",
                 "--engine", "spark"]) == 0
    assert read_remote(f"{s3_server}/p4/run/subset.npy") == (tmp_path / "local" / "subset.npy").read_bytes()


def test_the_mirror_fetches_only_what_changed_and_follows_deletions(s3_server, cache, tmp_path):
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.txt").write_text("bb")
    upload(source, f"{s3_server}/p5/tree")
    target = remote.RemotePath(f"{s3_server}/p5/tree")

    local = remote.pull(target, must_exist=True)
    assert (local / "a.txt").read_text() == "a" and (local / "sub" / "b.txt").read_text() == "bb"
    mtime = (local / "a.txt").stat().st_mtime_ns
    assert remote.pull(target, must_exist=True) == local
    assert (local / "a.txt").stat().st_mtime_ns == mtime  # not fetched again

    (local / "mine.txt").write_text("made here")  # a file only this machine has is never deleted by a pull
    s3, path = remote.filesystem(target.url)
    s3.delete_file(f"{path}/sub/b.txt")
    remote.pull(target, must_exist=True)
    assert not (local / "sub" / "b.txt").exists() and (local / "mine.txt").exists()

    # pushed files come back onto another machine with the modification time they had here
    assert remote.push(local, target) == 1  # mine.txt only: a.txt is unchanged
    os.environ["CURATE_CACHE_DIR"] = str(tmp_path / "other")
    again = remote.pull(target, must_exist=True)
    assert again != local and (again / "mine.txt").stat().st_mtime_ns == (local / "mine.txt").stat().st_mtime_ns


def test_remote_paths_that_cannot_be_used_name_the_url(s3_server, cache, tmp_path, capsys):
    assert main(["basic", "--pool", f"{s3_server}/no-such-pool", "--out", str(tmp_path / "o")]) == 2
    assert f"{s3_server}/no-such-pool: no such file or directory" in capsys.readouterr().err
    assert main(["basic", "--pool", "nosuchscheme://bucket/pool", "--out", str(tmp_path / "o")]) == 2
    assert "nosuchscheme://bucket/pool: no filesystem for this URL" in capsys.readouterr().err
    assert main(["basic", "--pool", "s3://no-such-bucket/pool", "--out", str(tmp_path / "o")]) == 2
    assert "s3://no-such-bucket/pool:" in capsys.readouterr().err
    assert main(["import-datacomp", "--src", f"{s3_server}/x", "--out", str(tmp_path / "p"), "--link-embeddings"]) == 2
    assert "--link-embeddings with a remote --src or --out" in capsys.readouterr().err


def test_a_datacomp_download_on_s3_is_imported_to_s3_and_curated_to_the_golden_subset(s3_server, cache, tmp_path):
    from tests.helpers import datacomp_pool

    upload(datacomp_pool(tmp_path / "src"), f"{s3_server}/p6/datacomp")
    assert main(["import-datacomp", "--src", f"{s3_server}/p6/datacomp", "--out", f"{s3_server}/p6/pool"]) == 0
    names = remote_names(f"{s3_server}/p6/pool")
    assert "_pool.json" in names and any(name.startswith("embeddings/l14/") for name in names)
    assert main(["run", "jobs/recipes/clip_score_l14_30pct.yaml", "--pool", f"{s3_server}/p6/pool",
                 "--out", f"{s3_server}/p6/run", "--workers", "1"]) == 0
    golden = Path(__file__).parent / "golden" / "clip_score_l14_30pct.npy"
    assert read_remote(f"{s3_server}/p6/run/subset.npy") == golden.read_bytes()


def test_a_key_that_would_land_outside_the_mirror_is_refused(s3_server, cache, tmp_path, capsys):
    s3, path = remote.filesystem(f"{s3_server}/p7/pool/00000.parquet")
    pq.write_table(pq.read_table(write_pool(tmp_path / "pool", [5]) / "00000.parquet"), path, filesystem=s3)
    import boto3  # a raw key: pyarrow's own client would normalise the dots away

    boto3.client("s3").put_object(Bucket=BUCKET, Key="p7/pool/sub/../../../escaped.txt", Body=b"outside")
    assert main(["basic", "--pool", f"{s3_server}/p7/pool", "--out", str(tmp_path / "o")]) == 2
    assert "a key that would land outside the mirror" in capsys.readouterr().err
    assert not list(cache.rglob("escaped.txt")) and not (cache.parent / "escaped.txt").exists()
