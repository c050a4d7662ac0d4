"""`curate ingest --retry-failed` and `--append`: real img2dataset downloads from the loopback
server, transient failures (503 until the file appears) retried in place, a retry killed midway,
new URL lists appended as new shards, duplicate uids refused."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.cli import main
from curate.demo.server import serve
from curate.errors import PoolError
from curate.pool import pool_info, read_shard, scan_shards
from curate.steps import ingest_more
from curate.steps.ingest import download_options, ingest

FAST = {"processes": 1, "threads": 8, "timeout": 2.0, "shard_size": 4}
OPTIONS = download_options(processes=1, threads=8, timeout=2.0)


def jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + index, 30), (10 * index, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


def url_list(path, base, names, offset=0):
    rows = [(f"{base}/{name}", f"caption {offset + i}") for i, name in enumerate(names)]
    pq.write_table(pa.table({"uid": [f"{offset + i:032x}" for i in range(len(rows))], "url": [r[0] for r in rows],
                             "caption": [r[1] for r in rows]}), path)
    return path


def pool_table(pool):
    return pa.concat_tables(read_shard(s.path) for s in scan_shards(pool))  # jpg from the tars, if there


@pytest.mark.slow
@pytest.mark.parametrize("output_format", ["parquet", "webdataset"])
def test_retry_failed_and_append(tmp_path, monkeypatch, output_format):
    root = tmp_path / "site"
    root.mkdir()
    for i in range(6):
        (root / f"ok{i}.jpg").write_bytes(jpeg(i))
    (root / "corrupt.jpg").write_bytes(b"not an image" * 20)
    names = ["ok0.jpg", "flaky/f0.jpg", "ok1.jpg", "missing/x.jpg", "flaky/f1.jpg", "corrupt.jpg", "ok2.jpg",
             "flaky/f2.jpg", "ok3.jpg", "flaky/f3.jpg"]
    with serve(root) as base:
        pool = tmp_path / "pool"
        ingest(url_list(tmp_path / "urls.parquet", base, names), pool, **FAST, output_format=output_format)
        before = pool_table(pool)
        tars = sorted(p.name for p in pool.glob("*.tar"))
        assert tars == ([] if output_format == "parquet" else ["00000.tar", "00001.tar", "00002.tar"])
        assert ("jpg" in pq.read_schema(pool / "00000.parquet").names) == (output_format == "parquet")
        status = before["status"].to_pylist()
        assert [status[i] for i in (1, 4, 7, 9)] == ["failed_to_download"] * 4
        assert "503" in before["error_message"][1].as_py() and "404" in before["error_message"][3].as_py()
        # the files appear; a retry killed after its first shard leaves the pool refused, not half-new
        for i in range(4):
            (root / f"f{i}.jpg").write_bytes(jpeg(10 + i))
        real, calls = ingest_more.replace_rows, []

        def killed(*args):
            calls.append(args[0])
            if len(calls) > 1:
                raise KeyboardInterrupt("killed")
            real(*args)

        monkeypatch.setattr(ingest_more, "replace_rows", killed)
        with pytest.raises(KeyboardInterrupt):
            ingest_more.retry_failed(pool, OPTIONS)
        monkeypatch.undo()
        assert pool_info(pool)["status"] == "writing"
        assert pool_info(pool)["output_format"] == output_format
        with pytest.raises(PoolError, match="did not finish"):
            scan_shards(pool)
        assert main(["ingest", "--retry-failed", "--out", str(pool), "--processes", "1", "--timeout", "2"]) == 0
        after = pool_table(pool)
        assert after["uid"].to_pylist() == before["uid"].to_pylist()  # no row lost, doubled or moved
        assert [after["status"][i].as_py() for i in (1, 4, 7, 9)] == ["success"] * 4
        assert [after["jpg"][i].as_py() for i in (1, 4, 7, 9)] == [jpeg(10 + i) for i in range(4)]
        for i in (0, 2, 3, 5, 6, 8):  # successes, the 404 and the undecodable row are untouched
            assert after.slice(i, 1).to_pylist() == before.slice(i, 1).to_pylist()
        info = pool_info(pool)
        assert info["status"] == "complete" and info["status_counts"]["success"] == 8
        assert [e["command"] for e in info["history"]] == ["retry-failed"]
        # append: new shards after the last, uids checked against the pool first
        shards = [s.path.name for s in scan_shards(pool)]
        more = url_list(tmp_path / "more.parquet", base, ["ok4.jpg", "ok5.jpg", "missing/y.jpg"], offset=100)
        ingest_more.append(more, pool, OPTIONS)
        grown = scan_shards(pool)
        assert [s.path.name for s in grown][:len(shards)] == shards and len(grown) == len(shards) + 1
        assert pool_table(pool)["uid"].to_pylist()[-3:] == [f"{100 + i:032x}" for i in range(3)]
        assert pool_info(pool)["rows"] == 13
        ingest_more.append(more, pool, OPTIONS)  # the same list again: nothing changes
        assert pool_info(pool)["rows"] == 13
        clash = url_list(tmp_path / "clash.parquet", base, ["ok5.jpg", "ok4.jpg"], offset=101)
        with pytest.raises(PoolError, match=r"row 0 has uid 0+65, which the pool already holds .*00003.parquet, row 1"):
            ingest_more.append(clash, pool, OPTIONS)
        assert pool_info(pool)["status"] == "complete"
        if output_format == "webdataset":  # every image in the tars, none in the parquet, index fresh
            assert sorted(p.name for p in pool.glob("*.tar")) == [f"{k:05d}.tar" for k in range(4)]
            assert "jpg" not in pq.read_schema(pool / "00003.parquet").names
            final = pool_table(pool)
            assert final["jpg"].null_count == 13 - final["status"].to_pylist().count("success") == 3


def test_retry_needs_a_pool_ingest_wrote(tmp_path):
    from curate.errors import RunDirError

    with pytest.raises(RunDirError, match="not a pool `curate ingest` wrote"):
        ingest_more.retry_failed(tmp_path, OPTIONS)


def test_transient_errors():
    status = pa.chunked_array([["failed_to_download"] * 5 + ["failed_to_resize", "success"]])
    errors = pa.chunked_array([["HTTP Error 503: Service Unavailable", "HTTP Error 404: Not Found",
                                "HTTP Error 429: Too Many Requests", "The read operation timed out",
                                "hash mismatch", "cannot identify image", None]])
    assert ingest_more.retryable(status, errors, False).tolist() == [True, False, True, True, False, False, False]
    assert ingest_more.retryable(status, errors, True).tolist() == [True] * 5 + [False, False]
