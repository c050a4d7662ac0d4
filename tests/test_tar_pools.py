"""Pools whose images stay in webdataset tars, read in place (curate.tarindex, curate.tarfiles):
the same bytes as a parquet pool for every reader (read_shard, embed on both engines, reshard on both
engines), bad tars refused with the file and member named, a changed tar re-indexed, and a DataComp
download directory (metadata + npz + img2dataset webdataset shards, downloaded in the test from a
loopback server) imported and resharded."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline, tarindex
from curate.errors import PoolError
from curate.pool import read_shard, scan_shards, shard_columns
from curate.steps.ingest import POOL_SCHEMA
from curate.steps.pool_tars import index_pool, store_shard
from curate.steps.reshard import ReshardConfig, reshard
from curate.tarfiles import scan_members
from curate.uid import uid_pairs
from tests.helpers import embed_config, embed_table, good_rows, run_subset


def pool_rows(rows: list[dict]) -> pa.Table:
    n = len(rows)
    return pa.table({"uid": [r["uid"] for r in rows], "url": [f"http://x/{i}" for i in range(n)],
                     "text": [r["text"] for r in rows], "sha256": [None] * n, "original_width": [100] * n,
                     "original_height": [90] * n, "width": [100] * n, "height": [90] * n,
                     "status": ["success" if r["jpg"] is not None else "failed_to_download" for r in rows],
                     "error_message": [None] * n, "jpg": [r["jpg"] for r in rows]}, schema=POOL_SCHEMA)


def two_pools(tmp_path, shards=((0, 9), (9, 20))):
    """The same rows as a parquet pool and as a webdataset pool (row 3 has no image)."""
    rows = good_rows(20)
    rows[3] = {**rows[3], "jpg": None}
    parquet, webdataset = tmp_path / "parquet", tmp_path / "webdataset"
    for pool, fmt in ((parquet, "parquet"), (webdataset, "webdataset")):
        pool.mkdir()
        for index, (low, high) in enumerate(shards):
            store_shard(pool_rows(rows[low:high]), pool / f"{index:05d}.parquet", fmt)
    index_pool(webdataset)
    return parquet, webdataset


def tar_with(path, members):
    """A tar written by Python's tarfile (default pax format): (name, data, or None for a symlink)."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
                archive.addfile(info)
    return path


def test_read_in_place_gives_the_parquet_pool_bytes(tmp_path):
    parquet, webdataset = two_pools(tmp_path)
    assert "jpg" not in pq.read_schema(webdataset / "00000.parquet").names
    assert shard_columns(webdataset / "00000.parquet") == shard_columns(parquet / "00000.parquet")
    for name in ("00000.parquet", "00001.parquet"):
        assert read_shard(webdataset / name).equals(read_shard(parquet / name))
        rows = np.array([5, 0, 3, 5])  # any rows, repeats, the row without an image
        assert read_shard(webdataset / name, ["jpg", "uid"], rows).equals(read_shard(parquet / name, ["jpg", "uid"], rows))
    manifest = tarindex.load_index(webdataset)
    assert manifest["images"] == 19 and [t["path"] for t in manifest["tars"]] == ["00000.tar", "00001.tar"]
    index_bytes = sum(p.stat().st_size for p in (webdataset / "images").iterdir())
    assert index_bytes < 0.1 * sum(p.stat().st_size for p in webdataset.glob("*.tar"))  # an index, not a copy


@pytest.mark.spark
def test_embed_and_reshard_read_tars_in_place_on_both_engines(tmp_path, spark):
    parquet, webdataset = two_pools(tmp_path)
    for pool in (parquet, webdataset):
        pipeline.run_stage("embed", embed_config(), pool, tmp_path / f"embed-{pool.name}", workers=2)
    reference = embed_table(tmp_path / "embed-parquet")
    assert embed_table(tmp_path / "embed-webdataset").equals(reference)
    assert reference.column("embed_reason").to_pylist().count("no_image") == 1
    pipeline.run_stage("embed", embed_config(), webdataset, tmp_path / "embed-spark", engine="spark", spark=spark)
    assert embed_table(tmp_path / "embed-spark").equals(reference)
    # subset/ carries the selected rows' images, read from the tars after the select, on both engines
    select = "embed_reason IS NULL AND text LIKE '%1%'"
    run_subset(parquet, tmp_path / "embed-parquet", ["embed"], select)
    run_subset(webdataset, tmp_path / "embed-webdataset", ["embed"], select)
    run_subset(webdataset, tmp_path / "embed-spark", ["embed"], select, engine="spark", spark=spark)
    subsets = [pq.read_table(sorted((tmp_path / f"embed-{name}" / "subset").glob("part-*.parquet"))).sort_by("uid")
               for name in ("parquet", "webdataset", "spark")]
    assert subsets[0].num_rows == 11 and subsets[0].column("jpg").null_count == 0
    assert subsets[1].equals(subsets[0]) and subsets[2].equals(subsets[0])
    uids = read_shard(parquet / "00001.parquet", ["uid"]).column("uid").to_pylist()[::2] + [good_rows(1)[0]["uid"]]
    subset = tmp_path / "subset.npy"
    np.save(subset, np.sort(uid_pairs(uids)))
    cfg = ReshardConfig(shard_size=3, shuffle=True)
    reshard(subset, tmp_path / "from-parquet", cfg, pool=parquet)
    reshard(subset, tmp_path / "from-tars", cfg, pool=webdataset)
    from curate.engines import open_session

    with open_session("spark", spark=spark) as session:
        reshard(subset, tmp_path / "from-tars-spark", cfg, pool=webdataset, session=session)
    expected = sorted(p.name for p in (tmp_path / "from-parquet").glob("*.tar"))
    assert len(expected) == 3
    for name in expected:
        data = (tmp_path / "from-parquet" / name).read_bytes()
        assert (tmp_path / "from-tars" / name).read_bytes() == data
        assert (tmp_path / "from-tars-spark" / name).read_bytes() == data


def test_tar_members_are_checked(tmp_path):
    image = b"\xff\xd8 jpeg bytes"
    long_key = "d/" + "k" * 120  # a pax long name: tarfile reads it, the key keeps the directory
    ok = tar_with(tmp_path / "ok.tar", [(f"{long_key}.jpg", image), ("a.txt", b"caption"), ("b.c.jpg", image)])
    members = scan_members(ok)
    assert set(members) == {long_key} and members[long_key][1] == len(image)  # b.c.jpg has extension c.jpg
    with open(ok, "rb") as handle:
        handle.seek(members[long_key][0])
        assert handle.read(len(image)) == image
    for name, members, message in [
        ("traversal", [("../evil.jpg", image)], "parent-directory path; refused"),
        ("absolute", [("/etc/evil.jpg", image)], "absolute or parent-directory path"),
        ("link", [("a.jpg", None)], "is a link or device"),
        ("twice", [("a.jpg", image), ("a.jpg", image)], "key 'a' appears twice"),
    ]:
        with pytest.raises(PoolError, match=message):
            scan_members(tar_with(tmp_path / f"{name}.tar", members))
    whole = tar_with(tmp_path / "cut.tar", [("a.jpg", image * 200), ("b.jpg", image * 200)]).read_bytes()
    b_data = scan_members(tmp_path / "cut.tar")["b"][0]
    (tmp_path / "cut.tar").write_bytes(whole[:b_data + 100])  # a download killed inside b.jpg's data
    with pytest.raises(PoolError, match=r"cut.tar: truncated mid-member: 'b.jpg'"):
        scan_members(tmp_path / "cut.tar")
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(PoolError, match="garbage.tar: not a readable tar file"):
        scan_members(tmp_path / "garbage.tar")


def test_index_refuses_tars_and_parquets_that_do_not_match(tmp_path):
    _, pool = two_pools(tmp_path)
    shards = [s.path for s in scan_shards(pool)]
    first = read_shard(pool / "00000.parquet", ["uid"]).column("uid").to_pylist()
    extra = tar_with(tmp_path / "extra.tar", [(f"{'f' * 32}.jpg", b"x")])
    pq.write_table(pa.table({"uid": [first[0]], "status": ["success"]}), tmp_path / "extra.parquet")
    with pytest.raises(PoolError, match=f"extra.tar: member {'f' * 32}.jpg has no row in .*extra.parquet"):
        tarindex.build_index(pool, [(extra, tmp_path / "extra.parquet")], shards)
    pq.write_table(pa.table({"uid": [first[0], "f" * 32], "status": ["success", "success"]}), tmp_path / "extra.parquet")
    with pytest.raises(PoolError, match=f"extra.parquet row 0: uid {first[0]} has status success but .*extra.tar has no "
                                        f"member {first[0]}.jpg"):
        tarindex.build_index(pool, [(extra, tmp_path / "extra.parquet")], shards)
    both = [(pool / "00000.tar", pool / "00000.parquet"), (pool / "00000.tar", pool / "00000.parquet")]
    with pytest.raises(PoolError, match=f"uid {first[0]} has an image in more than one tar"):
        tarindex.build_index(pool, both, shards)


def test_a_changed_tar_is_refused_then_reindexed(tmp_path, caplog):
    parquet, pool = two_pools(tmp_path)
    before = pipeline.run_stage("embed", embed_config(), pool, tmp_path / "out", workers=1)["fingerprint"]
    # the tar is replaced (say re-downloaded) with its members in another order: same images, new offsets
    table = read_shard(parquet / "00000.parquet").take(pa.array(np.arange(8, -1, -1)))
    os.utime(pool / "00000.tar", ns=(1, 1))
    with pytest.raises(PoolError, match=r"00000.tar: changed after .*images indexed it"):
        read_shard(pool / "00000.parquet", ["jpg"])
    store_shard(table, tmp_path / "reordered.parquet", "webdataset")
    os.replace(tmp_path / "reordered.tar", pool / "00000.tar")
    with caplog.at_level(logging.WARNING):
        shards = scan_shards(pool)  # every command scans first: the index is rebuilt
    assert "tar index is stale" in caplog.text and "00000.tar changed" in caplog.text
    assert read_shard(shards[0].path).equals(read_shard(parquet / "00000.parquet"))
    after = pipeline.run_stage("embed", embed_config(), pool, tmp_path / "out", workers=1)
    assert after["fingerprint"] != before  # the images' places changed: embed recomputed, not reused
    pipeline.run_stage("embed", embed_config(), parquet, tmp_path / "ref", workers=1)
    assert embed_table(tmp_path / "out").equals(embed_table(tmp_path / "ref"))


@pytest.mark.slow
def test_datacomp_download_directory_is_imported_and_resharded(tmp_path):
    from curate.demo.server import serve
    from curate.demo.synthetic import write_datacomp_pool
    from curate.steps.datacomp import import_datacomp
    from curate.steps.ingest import run_img2dataset
    from tests.helpers import image_bytes

    download = tmp_path / "datacomp"
    metadata = write_datacomp_pool(download / "metadata", shards=2, rows_per_shard=30, seed=3, models=("b32",))
    site = tmp_path / "site"
    site.mkdir()
    urls = []
    for parquet in sorted(metadata.glob("*.parquet")):
        table = pq.read_table(parquet)
        uids = table.column("uid").to_pylist()
        for row, uid in enumerate(uids):
            if row % 7 != 3:  # every 7th image is gone from the web: a failed download
                (site / f"{uid}.jpg").write_bytes(image_bytes("red", row))
        urls.append(table.select(["uid", "text"]))
    with serve(site) as base:
        wanted = pa.concat_tables(urls)
        wanted = wanted.append_column("url", pa.array([f"{base}/{uid}.jpg" for uid in wanted.column("uid").to_pylist()]))
        pq.write_table(wanted.rename_columns(["uid", "caption", "url"]), tmp_path / "urls.parquet")
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import img2dataset  # DataComp's download_upstream.py settings: webdataset, uid saved, original bytes

        img2dataset.download(url_list=str(tmp_path / "urls.parquet"), output_folder=str(download / "shards"),
                             input_format="parquet", output_format="webdataset", url_col="url", caption_col="caption",
                             save_additional_columns=["uid"], number_sample_per_shard=25, processes_count=1,
                             thread_count=8, resize_mode="no", skip_reencode=True, encode_format="jpg",
                             compute_hash="sha256", enable_wandb=False, distributor="multiprocessing", timeout=3)
    assert run_img2dataset  # the same img2dataset curate's ingest drives
    info = import_datacomp(download, tmp_path / "pool")
    gone = 60 - len(list(site.glob("*.jpg")))
    assert info["tar_shards"] == 3 and gone == 8 and info["images_linked"] == 60 - gone
    pool = tmp_path / "pool"
    rows = [read_shard(s.path, ["uid", "jpg"]) for s in scan_shards(pool)]
    got = {u: j for t in rows for u, j in zip(t.column("uid").to_pylist(), t.column("jpg").to_pylist())}
    assert all(got[p.stem] == p.read_bytes() for p in site.glob("*.jpg")) and sum(v is None for v in got.values()) == gone
    # the same samples with the bytes in a parquet column reshard to the same tars
    copy = tmp_path / "parquet-pool"
    import_datacomp(metadata, copy)
    for shard in scan_shards(copy):
        table = pq.read_table(shard.path)
        pq.write_table(table.append_column("jpg", pa.array([got[u] for u in table.column("uid").to_pylist()],
                                                           pa.binary())), shard.path)
    subset = tmp_path / "subset.npy"
    np.save(subset, np.sort(uid_pairs(sorted(got)[::2])))
    manifests = [reshard(subset, tmp_path / name, ReshardConfig(shard_size=8, blur_faces=True), pool=source)
                 for name, source in (("from-tars", pool), ("from-parquet", copy))]
    assert manifests[0]["successes"] == manifests[1]["successes"] > 0 and manifests[0]["failures"] == manifests[1]["failures"]
    for tar in sorted((tmp_path / "from-parquet").glob("*.tar")):
        assert (tmp_path / "from-tars" / tar.name).read_bytes() == tar.read_bytes()
    assert json.loads((pool / "images" / "_manifest.json").read_text())["origin"] == "datacomp"
    # an index build killed before its manifest is redone from images/_sources.json on the next scan
    (pool / "images" / "_manifest.json").unlink()
    scan_shards(pool)
    rebuilt = json.loads((pool / "images" / "_manifest.json").read_text())
    assert rebuilt["origin"] == "datacomp" and rebuilt["images"] == info["images_linked"]
