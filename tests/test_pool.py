import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import PoolError
from curate.pool import check_unique_uids, list_shards, read_shard, scan_shards
from tests.helpers import write_pool


def test_shards_are_the_top_level_parquet_files_in_name_order(tiny_pool):
    (tiny_pool / "embeddings").mkdir()
    pq.write_table(pa.table({"x": [1]}), tiny_pool / "embeddings" / "00000.parquet")
    pq.write_table(pa.table({"x": [1]}), tiny_pool / "_ground_truth.parquet")
    shards = scan_shards(tiny_pool)
    assert [s.path.name for s in shards] == ["00000.parquet", "00001.parquet", "00002.parquet", "00003.parquet"]
    assert [s.rows for s in shards] == [40, 0, 35, 25]
    assert shards[2].part == "part-00002"


def test_missing_and_empty_pools_are_clear_errors(tmp_path):
    with pytest.raises(PoolError, match="does not exist"):
        list_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="empty pool"):
        list_shards(tmp_path / "empty")


def test_truncated_parquet_names_the_file(tiny_pool):
    path = tiny_pool / "00002.parquet"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PoolError, match="00002.parquet: not a readable parquet file"):
        scan_shards(tiny_pool)


def test_missing_column_names_file_and_columns(tiny_pool):
    with pytest.raises(PoolError, match=r"00000.parquet: missing required column\(s\) \['caption'\]"):
        read_shard(tiny_pool / "00000.parquet", ["uid", "caption"])


def test_malformed_uid_names_file_and_row(tiny_pool):
    table = pq.read_table(tiny_pool / "00003.parquet")
    uids = table.column("uid").to_pylist()
    uids[7] = uids[7].upper()
    pq.write_table(table.set_column(0, "uid", pa.array(uids)), tiny_pool / "00003.parquet")
    with pytest.raises(PoolError, match="00003.parquet row 7: malformed uid"):
        read_shard(tiny_pool / "00003.parquet", ["uid"])


def test_duplicate_uid_across_shards_names_both_places(tiny_pool):
    first = pq.read_table(tiny_pool / "00000.parquet")
    last = pq.read_table(tiny_pool / "00003.parquet")
    uids = last.column("uid").to_pylist()
    uids[5] = first.column("uid")[12].as_py()
    pq.write_table(last.set_column(0, "uid", pa.array(uids)), tiny_pool / "00003.parquet")
    with pytest.raises(PoolError, match=r"00003.parquet row 5 repeats the uid of .*00000.parquet row 12"):
        check_unique_uids(tiny_pool)


def test_unique_pool_passes_and_counts_rows(tiny_pool):
    assert check_unique_uids(tiny_pool) == 100


def test_invalid_utf8_text_is_repaired_not_lost(tmp_path):
    pool = write_pool(tmp_path / "pool", [3])
    table = pq.read_table(pool / "00000.parquet")
    raw = pa.array([b"ok caption here", b"bad \xff\xfe bytes here", None], pa.binary())
    pq.write_table(table.set_column(2, "text", raw.view(pa.string())), pool / "00000.parquet")
    text = read_shard(pool / "00000.parquet", ["uid", "text"]).column("text").to_pylist()
    assert text == ["ok caption here", "bad \ufffd\ufffd bytes here", None]
