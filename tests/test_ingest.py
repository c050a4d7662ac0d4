"""curate.steps.ingest: real img2dataset downloads from a loopback server into a parquet pool."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.demo.server import serve
from curate.errors import PoolError, RunDirError
from curate.pool import POOL_INFO, scan_shards
from curate.steps import ingest as ingest_module
from curate.steps.ingest import POOL_SCHEMA, ingest, raw_files, read_url_list
from curate.uid import derive_uid

pytestmark = pytest.mark.filterwarnings("ignore:.imghdr. is deprecated:DeprecationWarning")

FAST = {"processes": 1, "threads": 8, "timeout": 2.0, "shard_size": 4}
HUGE_CAPTION = ("a very long caption with ünïcödé " * 32_000)[:1_000_000]


def image_bytes(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A served folder of images: good JPEGs and a PNG, garbage bytes, a truncated JPEG."""
    root = tmp_path_factory.mktemp("site")
    files = {f"c{i}.jpg": image_bytes((40 + i, 30), (20 * i, 100, 50)) for i in range(4)}
    files["a.jpg"] = image_bytes((40, 30), (200, 10, 10))
    files["b.png"] = image_bytes((25, 35), (0, 0, 255), "PNG")
    files["corrupt.jpg"] = b"this is not an image at all" * 10
    files["truncated.jpg"] = image_bytes((64, 48), (9, 9, 9))[:300]
    for name, data in files.items():
        (root / name).write_bytes(data)
    with serve(root, slow_seconds=20.0) as base:
        yield {"base": base, "files": files, "root": root}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def main_run(site, tmp_path_factory) -> dict:
    """One ingest of a parquet URL list covering successes and every failure kind (3 shards)."""
    base, files = site["base"], site["files"]
    rows = [  # (url, caption, expected sha256 or None)
        (f"{base}/a.jpg", "a red rectangle", sha(files["a.jpg"])),
        (f"{base}/b.png", "a blue png", None),
        (f"{base}/missing/x.jpg", "not there", None),
        ("http://127.0.0.1:1/x.jpg", "refused", None),
        (f"{base}/corrupt.jpg", "garbage bytes", None),
        (f"{base}/truncated.jpg", "cut in half", None),
        (f"{base}/c0.jpg", "wrong hash", "0" * 64),
        (f"{base}/c1.jpg", HUGE_CAPTION, None),
        (f"{base}/c2.jpg", "upper-case hash", sha(files["c2.jpg"]).upper()),
        (f"{base}/slow/c3.jpg", "times out", None),
        (f"{base}/c3.jpg", None, ""),
    ]
    url_list = tmp_path_factory.mktemp("lists") / "urls.parquet"
    uids = [f"{i:032x}" for i in range(len(rows))]
    pq.write_table(pa.table({"uid": uids, "link": [r[0] for r in rows], "alt": [r[1] for r in rows],
                             "sha256": [r[2] for r in rows]}), url_list)
    out = url_list.parent / "pool"
    info = ingest(url_list, out, url_col="link", caption_col="alt", **FAST)
    table = pa.concat_tables(pq.read_table(shard.path) for shard in scan_shards(out))
    return {"info": info, "out": out, "table": table, "rows": rows, "uids": uids, "url_list": url_list}


def column(run: dict, name: str) -> list:
    return run["table"].column(name).to_pylist()


def test_rows_in_input_order_and_none_lost(main_run):
    assert main_run["table"].num_rows == len(main_run["rows"]) == main_run["info"]["rows"]
    assert column(main_run, "uid") == main_run["uids"]
    assert column(main_run, "url") == [r[0] for r in main_run["rows"]]
    assert [s.rows for s in scan_shards(main_run["out"])] == [4, 4, 3]
    assert main_run["table"].schema == POOL_SCHEMA
    assert not (main_run["out"] / ingest_module.WORK_DIR).exists()


def test_statuses_and_error_messages(main_run):
    status, error = column(main_run, "status"), column(main_run, "error_message")
    assert status == ["success", "success", "failed_to_download", "failed_to_download", "failed_to_resize",
                      "failed_to_resize", "failed_to_download", "success", "success", "failed_to_download",
                      "success"]
    assert "404" in error[2] and "refused" in error[3].lower() and "timed out" in error[9]
    assert error[6] == "hash mismatch"
    assert main_run["info"]["status_counts"] == {"success": 5, "failed_to_download": 4, "failed_to_resize": 2}
    info = main_run["out"] / POOL_INFO
    assert info.exists() and main_run["info"]["source"] == str(main_run["url_list"].resolve())


def test_success_keeps_original_bytes_and_sizes(main_run, site):
    files, row = site["files"], main_run["table"].slice(0, 1).to_pylist()[0]
    assert row["jpg"] == files["a.jpg"]  # resize_mode "no": the JPEG is byte-identical
    assert row["sha256"] == sha(files["a.jpg"])
    assert (row["original_width"], row["original_height"], row["width"], row["height"]) == (40, 30, 40, 30)
    png = main_run["table"].slice(1, 1).to_pylist()[0]
    assert png["sha256"] == sha(files["b.png"]) and png["jpg"][:2] == b"\xff\xd8"  # re-encoded as JPEG
    assert png["original_width"] == 25 and png["original_height"] == 35


def test_failed_rows_keep_input_hash_and_have_no_image(main_run):
    table = main_run["table"]
    failed = [i for i, s in enumerate(column(main_run, "status")) if s != "success"]
    for name in ("jpg", "width", "height", "original_width", "original_height"):
        assert all(table.column(name)[i].as_py() is None for i in failed)
    assert column(main_run, "sha256")[6] == "0" * 64
    assert column(main_run, "sha256")[8] == column(main_run, "sha256")[8].lower()
    assert column(main_run, "sha256")[2] is None


def test_huge_caption_and_null_caption_pass_through(main_run):
    text = column(main_run, "text")
    assert text[7] == HUGE_CAPTION and len(text[7]) == 1_000_000
    assert text[10] is None and text[0] == "a red rectangle"


def test_rerun_skips_a_finished_pool(main_run, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise AssertionError("img2dataset should not run again")

    monkeypatch.setattr(ingest_module, "run_img2dataset", fail)
    with caplog.at_level(logging.INFO, logger="curate.steps.ingest"):
        again = ingest(main_run["url_list"], main_run["out"], url_col="link", caption_col="alt", **FAST)
    assert again == main_run["info"] and "skipping" in caplog.text


def test_csv_with_non_utf8_and_quoted_newlines(site, tmp_path, caplog):
    base = site["base"]
    url_list = tmp_path / "urls.csv"
    url_list.write_bytes(
        b"url,caption,extra\n"
        + f"{base}/c0.jpg,plain caption,1\n".encode()
        + f"{base}/c1.jpg,caf\xe9 latin-1 bytes,2\n".encode("latin-1")
        + f'{base}/missing/y.jpg,"quoted, with comma\nand newline",3\n'.encode())
    with caplog.at_level(logging.WARNING):
        info = ingest(url_list, tmp_path / "pool", **FAST)
    table = pq.read_table(tmp_path / "pool" / "00000.parquet")
    assert info["rows"] == table.num_rows == 3
    assert table.column("text").to_pylist() == ["plain caption", "caf\ufffd latin-1 bytes",
                                                "quoted, with comma\nand newline"]
    assert "U+FFFD" in caplog.text and "[1]" in caplog.text
    assert table.column("uid")[0].as_py() == derive_uid(f"{base}/c0.jpg", "plain caption")
    assert table.column("status").to_pylist() == ["success", "success", "failed_to_download"]
    assert table.column("jpg")[1].as_py() == site["files"]["c1.jpg"]


def test_tsv_with_uids_and_hashes(site, tmp_path):
    base, files = site["base"], site["files"]
    url_list = tmp_path / "urls.tsv"
    lines = ["uid\turl\tcaption\tsha256",
             f"{'a' * 32}\t{base}/c2.jpg\t\"quotes\" stay as they are\t{sha(files['c2.jpg'])}",
             f"{'b' * 32}\t{base}/c3.jpg\ttab separated\t{sha(files['c2.jpg'])}"]
    url_list.write_text("\n".join(lines) + "\n")
    ingest(url_list, tmp_path / "pool", **FAST)
    table = pq.read_table(tmp_path / "pool" / "00000.parquet")
    assert table.column("uid").to_pylist() == ["a" * 32, "b" * 32]
    assert table.column("text")[0].as_py() == '"quotes" stay as they are'
    assert table.column("status").to_pylist() == ["success", "failed_to_download"]
    assert table.column("error_message")[1].as_py() == "hash mismatch"


def write_list(path: Path, columns: dict) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table(columns), path)
    else:
        header = ",".join(columns)
        rows = [",".join(values) for values in zip(*columns.values())]
        path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_missing_column_names_the_file_and_its_columns(tmp_path, suffix):
    path = write_list(tmp_path / f"urls{suffix}", {"url": ["http://x/1.jpg"], "text": ["a caption"]})
    with pytest.raises(PoolError, match=r"urls\.(parquet|csv).*missing column.*'caption'.*it has.*'text'"):
        read_url_list(path, "url", "caption")


def test_malformed_uid_names_file_and_row(tmp_path):
    path = write_list(tmp_path / "urls.parquet", {"uid": ["a" * 32, "NOT-A-UID"], "url": ["u1", "u2"],
                                                   "caption": ["c1", "c2"]})
    with pytest.raises(PoolError, match=r"urls\.parquet row 1: malformed uid 'NOT-A-UID'"):
        read_url_list(path, "url", "caption")


def test_duplicate_uids_name_both_rows(tmp_path):
    path = write_list(tmp_path / "urls.parquet", {"uid": ["a" * 32, "b" * 32, "a" * 32], "url": ["u1", "u2", "u3"],
                                                   "caption": ["c1", "c2", "c3"]})
    with pytest.raises(PoolError, match=r"urls\.parquet: duplicate uid a{32} in rows 0 and 2"):
        read_url_list(path, "url", "caption")
    same = write_list(tmp_path / "same.csv", {"url": ["u1", "u1"], "caption": ["c", "c"]})
    with pytest.raises(PoolError, match=r"same\.csv: duplicate uid .* rows 0 and 1 \(same url and caption\)"):
        read_url_list(same, "url", "caption")


@pytest.mark.parametrize("content", [b"", b"url,caption\n"])
def test_empty_csv(tmp_path, content):
    path = tmp_path / "urls.csv"
    path.write_bytes(content)
    with pytest.raises(PoolError, match=r"urls\.csv: empty URL list"):
        ingest(path, tmp_path / "pool", **FAST)


def test_empty_parquet(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), path)
    with pytest.raises(PoolError, match="empty URL list"):
        ingest(path, tmp_path / "pool", **FAST)


def test_max_caption_chars_truncates_but_uid_uses_the_full_caption(tmp_path):
    path = write_list(tmp_path / "urls.csv", {"url": ["u1", "u2"], "caption": ["short", "x" * 50]})
    table, truncated = read_url_list(path, "url", "caption", max_caption_chars=10)
    assert truncated == 1 and table.column("caption").to_pylist() == ["short", "x" * 10]
    assert table.column("uid")[1].as_py() == derive_uid("u2", "x" * 50)


def test_lost_rows_are_named(tmp_path):
    inputs, _ = read_url_list(write_list(tmp_path / "urls.csv", {"url": ["u0", "u1", "u2"],
                                                                  "caption": ["a", "b", "c"]}), "url", "caption")
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"input_row": np.array([2, 0], dtype=np.int64)}), raw / "00000.parquet")
    with pytest.raises(PoolError, match=r"urls\.csv: img2dataset lost 1 of 3 rows \(first rows \[1\], urls \['u1'\]"):
        raw_files([raw], inputs, tmp_path / "urls.csv")


def test_refuses_a_folder_holding_another_pool(tmp_path):
    path = write_list(tmp_path / "urls.csv", {"url": ["u1"], "caption": ["c1"]})
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / POOL_INFO).write_text('{"source": "/elsewhere/list.parquet", "rows": 1}')
    with pytest.raises(RunDirError, match=r"holds the pool of /elsewhere/list\.parquet.*--overwrite"):
        ingest(path, tmp_path / "pool", **FAST)
