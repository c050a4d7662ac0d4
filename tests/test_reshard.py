"""reshard: a run's selection -> webdataset tars (DataComp's resharder semantics), both engines."""

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.cli import main
from curate.engines import open_session
from curate.errors import RunDirError
from curate.steps.reshard import ReshardConfig, ReshardError, reshard
from curate.uid import derive_uid, uid_pairs, write_datacomp_subset

SCHEMA = pa.schema([("uid", pa.string()), ("text", pa.string()), ("jpg", pa.binary()), ("original_width", pa.int64()),
                    ("clip_b32_similarity_score", pa.float32()), ("face_bboxes", pa.list_(pa.list_(pa.float64())))])


def jpeg(index: int, size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (index * 20 % 256, 100, 255 - index * 20 % 256)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_rows(n: int) -> list[dict]:
    """Row i: caption "caption i", a distinct JPEG (none for row 9: a failed download), no faces."""
    return [{"uid": derive_uid(f"img://{i}", f"caption {i}"), "text": f"caption {i}", "jpg": None if i == 9 else jpeg(i),
             "original_width": 32, "clip_b32_similarity_score": float("nan") if i == 2 else i / 10, "face_bboxes": []}
            for i in range(n)]


def write_pool(directory: Path, rows: list[dict], sizes: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    start = 0
    for index, size in enumerate(sizes):
        pq.write_table(pa.Table.from_pylist(rows[start:start + size], schema=SCHEMA), directory / f"{index:05d}.parquet")
        start += size
    return directory


def write_run(run: Path, rows: list[dict], picks: list[int], pool: Path | None = None) -> Path:
    """subset.npy with the picked rows (repeats allowed) and a subset parquet with stage columns."""
    run.mkdir(parents=True, exist_ok=True)
    write_datacomp_subset(uid_pairs([rows[i]["uid"] for i in picks]), run / "subset.npy")
    chosen = sorted(set(picks))
    table = pa.Table.from_pylist([rows[i] for i in chosen], schema=SCHEMA)
    table = table.append_column("basic_keep", pa.array([i % 2 == 0 for i in chosen]))
    table = table.append_column("metaclip_entries", pa.array([[i, i + 1] for i in chosen], pa.list_(pa.int32())))
    table = table.append_column("embed_image", pa.array([b"\x00\x01"] * len(chosen), pa.binary()))  # not JSON
    (run / "subset").mkdir(exist_ok=True)
    pq.write_table(table, run / "subset" / "part-00000.parquet")
    if pool is not None:
        (run / "_run.json").write_text(json.dumps({"pool": str(pool)}))
    return run


def read_tars(out: Path) -> list[tuple[str, bytes, str, dict]]:
    """(key, jpg, txt, json) per sample, over all shards in order, checking member order."""
    samples = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as archive:
            members = archive.getmembers()
            assert [m.name.split(".")[1] for m in members] == ["jpg", "txt", "json"] * (len(members) // 3)
            assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
            data = [archive.extractfile(m).read() for m in members]
        rebuilt = io.BytesIO()  # what Python's tarfile writes for the same members (ustar, default headers)
        with tarfile.open(fileobj=rebuilt, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for member, content in zip(members, data):
                info = tarfile.TarInfo(member.name)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        assert rebuilt.getvalue() == path.read_bytes()
        for start in range(0, len(members), 3):
            key = members[start].name.split(".")[0]
            samples.append((key, data[start], data[start + 1].decode(), json.loads(data[start + 2])))
    return samples


@pytest.fixture
def rows() -> list[dict]:
    return make_rows(12)


@pytest.fixture
def pool(tmp_path, rows) -> Path:
    return write_pool(tmp_path / "image_pool", rows, [5, 0, 7])


def test_repeats_are_written_as_repeats_with_the_pool_bytes_and_curation_json(tmp_path, rows, pool):
    run = write_run(tmp_path / "run", rows, [0, 1, 1, 1, 3, 6, 6, 11, 9])
    manifest = reshard(run, tmp_path / "shards", ReshardConfig(shard_size=4), pool=pool, workers=1)
    assert manifest["samples"] == 9 and manifest["unique_uids"] == 6 and manifest["repeated_samples"] == 3
    assert manifest["shards"] == 3 and manifest["successes"] == 8 and manifest["failures"] == {"no_image": 1}

    samples = read_tars(tmp_path / "shards")
    # pool order, repeats adjacent; keys are the running sample index; row 9 (no image) is not written
    assert [s[2] for s in samples] == [f"caption {i}" for i in (0, 1, 1, 1, 3, 6, 6, 11)]
    assert [s[0] for s in samples] == [f"{k:09d}" for k in (0, 1, 2, 3, 4, 5, 6, 8)]  # 7: row 9
    assert all(s[1] == rows[int(s[2].split()[1])]["jpg"] for s in samples)  # byte-identical images
    first, third = samples[0][3], samples[4][3]
    assert first == {"key": "000000000", "uid": rows[0]["uid"], "original_width": 32, "face_bboxes": [],
                     "clip_b32_similarity_score": 0.0, "basic_keep": True, "metaclip_entries": [0, 1]}
    assert third["basic_keep"] is False and third["metaclip_entries"] == [3, 4]
    assert third["clip_b32_similarity_score"] == pytest.approx(0.3)

    stats = [json.loads((tmp_path / "shards" / f"{k:08d}_stats.json").read_text()) for k in range(3)]
    assert [(s["count"], s["successes"]) for s in stats] == [(4, 4), (4, 3), (1, 1)]
    assert stats[1]["failures"] == {"no_image": 1} and stats[1]["failed_uids"] == [rows[9]["uid"]]
    assert stats[0]["uids"] == [rows[i]["uid"] for i in (0, 1, 1, 1)]
    assert all(s["bytes"] == (tmp_path / "shards" / f"{k:08d}.tar").stat().st_size for k, s in enumerate(stats))


def test_nan_scores_become_null_and_the_subset_parquet_alone_is_a_selection(tmp_path, rows, pool):
    run = write_run(tmp_path / "run", rows, [2, 4])
    (run / "subset.npy").unlink()
    reshard(run, tmp_path / "shards", pool=pool, workers=1)
    samples = read_tars(tmp_path / "shards")
    assert [s[2] for s in samples] == ["caption 2", "caption 4"]
    assert samples[0][3]["clip_b32_similarity_score"] is None and "embed_image" not in samples[0][3]


def test_shuffle_is_seeded_and_independent_of_the_pool_sharding(tmp_path, rows, pool):
    picks = [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    run = write_run(tmp_path / "run", rows, picks)
    other_pool = write_pool(tmp_path / "pool1", rows, [12])
    cfg = ReshardConfig(shard_size=5, shuffle=True, seed=3)
    reshard(run, tmp_path / "a", cfg, pool=pool, workers=1)
    reshard(run, tmp_path / "b", cfg, pool=other_pool, workers=1)
    reshard(run, tmp_path / "c", ReshardConfig(shard_size=5, shuffle=True, seed=4), pool=pool, workers=1)
    for name in ("00000000.tar", "00000001.tar", "00000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    order_a = [s[2] for s in read_tars(tmp_path / "a")]
    order_c = [s[2] for s in read_tars(tmp_path / "c")]
    assert order_a != order_c and sorted(order_a) == sorted(order_c) == sorted(f"caption {i}" for i in picks)
    assert order_a != [f"caption {i}" for i in picks]


def test_missing_uids_and_pools_without_images_stop_before_writing(tmp_path, rows, pool, tiny_pool):
    run = write_run(tmp_path / "run", rows, [0, 1])
    strangers = uid_pairs([derive_uid(f"other://{i}", "x") for i in range(7)])
    write_datacomp_subset(np.concatenate([uid_pairs([rows[0]["uid"]]), strangers]), run / "subset.npy")
    with pytest.raises(ReshardError, match=r"7 of 8 selected uids are not in the pool \(e.g. [0-9a-f]{32}, "):
        reshard(run, tmp_path / "shards", pool=pool)
    with pytest.raises(ReshardError, match="reshard needs image bytes"):
        reshard(run, tmp_path / "shards", pool=tiny_pool)
    assert not (tmp_path / "shards").exists()
    np.save(run / "subset.npy", np.zeros(2, dtype=[("a", "<u8"), ("b", "<u8")]))
    with pytest.raises(ReshardError, match="exactly np.dtype"):
        reshard(run, tmp_path / "shards", pool=pool)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    write_run(run, rows, [0])
    with pytest.raises(RunDirError, match="not empty and not a reshard curate wrote"):
        reshard(run, tmp_path / "foreign", pool=pool)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def face_rows() -> list[dict]:
    """Row 0: flat grey with a black/white checkerboard in its centre quarter (the face); row 1 plain."""
    pixels = np.full((64, 64, 3), 128, np.uint8)
    checker = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    pixels[16:48, 16:48] = checker[..., None]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    rows = make_rows(2)
    rows[0].update(jpg=buffer.getvalue(), face_bboxes=[[0.25, 0.25, 0.75, 0.75]])
    return rows


def test_blurring_changes_the_face_box_only_and_keeps_other_images(tmp_path):
    rows = face_rows()
    pool = write_pool(tmp_path / "pool", rows, [2])
    run = write_run(tmp_path / "run", rows, [0, 1])
    manifest = reshard(run, tmp_path / "shards", ReshardConfig(blur_faces=True), pool=pool, workers=1)
    assert manifest["blurred"] == 1 and manifest["face_boxes_clipped"]["samples"] == 0
    (_, blurred, _, meta), (_, plain, _, _) = read_tars(tmp_path / "shards")
    assert plain == rows[1]["jpg"] and blurred[:2] == b"\xff\xd8"  # re-encoded as JPEG
    before = np.asarray(Image.open(io.BytesIO(rows[0]["jpg"])).convert("L"), np.float64)
    after = np.asarray(Image.open(io.BytesIO(blurred)).convert("L"), np.float64)
    assert np.abs(after[:8, :8] - before[:8, :8]).max() <= 4  # outside the box: equal up to JPEG
    assert np.abs(after[28:36, 28:36] - before[28:36, 28:36]).mean() > 60  # the checkerboard is gone
    assert after[28:36, 28:36].std() < 20 and meta["face_bboxes"] == [[0.25, 0.25, 0.75, 0.75]]


def test_bad_face_boxes_stop_with_the_uid_and_boxes_past_the_frame_are_clipped(tmp_path, caplog):
    rows = face_rows()
    run = write_run(tmp_path / "run", rows, [0, 1])
    for bad in ([[0.5, 0.2, 0.4, 0.6]], [[0.1, 0.1, float("nan"), 0.3]], [[0.1, 0.2, 0.3]]):
        rows[1]["face_bboxes"] = bad
        pool = write_pool(tmp_path / "bad", rows, [2])
        with pytest.raises(ReshardError, match=f"row 1: uid {rows[1]['uid']} has a malformed face box"):
            reshard(run, tmp_path / "shards", ReshardConfig(blur_faces=True), pool=pool)
    rows[1]["face_bboxes"] = [[-0.2, 0.5, 0.4, 1.3]]
    pool = write_pool(tmp_path / "clipped", rows, [2])
    with caplog.at_level(logging.WARNING, logger="curate.steps.tars"):
        manifest = reshard(run, tmp_path / "shards", ReshardConfig(blur_faces=True), pool=pool, workers=1)
    assert manifest["face_boxes_clipped"] == {"samples": 1, "examples": [rows[1]["uid"]]}
    assert manifest["blurred"] == 2 and "outside 0..1, clipped" in caplog.text
    (tmp_path / "nofaces").mkdir()
    no_faces = pa.Table.from_pylist(rows, schema=SCHEMA).drop_columns(["face_bboxes"])
    pq.write_table(no_faces, tmp_path / "nofaces" / "00000.parquet")
    with pytest.raises(ReshardError, match="needs a 'face_bboxes' column"):
        reshard(run, tmp_path / "other", ReshardConfig(blur_faces=True), pool=tmp_path / "nofaces")


def test_a_rerun_skips_finished_shards_and_new_settings_rewrite(tmp_path, rows, pool):
    run = write_run(tmp_path / "run", rows, [0, 1, 2, 3, 4, 5, 6, 7])
    out = tmp_path / "shards"
    reshard(run, out, ReshardConfig(shard_size=3), pool=pool, workers=1)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    (out / "00000001.tar").unlink()  # as if killed while writing shard 1
    (out / ".00000002.tar.tmp-123").write_bytes(b"half")
    manifest = reshard(run, out, ReshardConfig(shard_size=3), pool=pool, workers=1)
    assert manifest["shards_written_last_run"] == 1 and not list(out.glob(".*tmp*"))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    assert after["00000000.tar"] == before["00000000.tar"] and after["00000002.tar"] == before["00000002.tar"]
    assert after["00000001.tar"][1] == before["00000001.tar"][1]
    manifest = reshard(run, out, ReshardConfig(shard_size=5), pool=pool, workers=1)
    assert manifest["shards_written_last_run"] == 2 and sorted(p.name for p in out.glob("*.tar")) == ["00000000.tar", "00000001.tar"]


def test_cli_takes_the_pool_from_the_run_and_reports_errors(tmp_path, rows, pool, capsys):
    run = write_run(tmp_path / "run", rows, [0, 3], pool=pool)
    assert main(["reshard", str(run), "--out", str(tmp_path / "shards"), "--workers", "2", "--shuffle"]) == 0
    assert json.loads(capsys.readouterr().out)["successes"] == 2
    (run / "_run.json").unlink()
    assert main(["reshard", str(run), "--out", str(tmp_path / "shards")]) == 2
    assert "pass --pool" in capsys.readouterr().err


@pytest.mark.spark
def test_local_and_spark_write_identical_shards(tmp_path, spark):
    rows = face_rows() + make_rows(12)[2:]
    rows[3]["face_bboxes"] = [[0.0, 0.0, 0.5, 1.2]]
    pool = write_pool(tmp_path / "pool", rows, [4, 0, 8])
    run = write_run(tmp_path / "run", rows, [0, 1, 1, 3, 4, 5, 6, 8, 9, 9, 10, 11])
    for shuffle in (True, False):
        cfg = ReshardConfig(shard_size=5, shuffle=shuffle, blur_faces=True)
        local = reshard(run, tmp_path / f"local{shuffle}", cfg, pool=pool, workers=2)
        with open_session("spark", spark=spark) as session:
            distributed = reshard(run, tmp_path / f"spark{shuffle}", cfg, pool=pool, session=session)
        names = sorted(p.name for p in (tmp_path / f"local{shuffle}").iterdir() if p.name != "_manifest.json" and not p.name.startswith("."))
        assert names == sorted(p.name for p in (tmp_path / f"spark{shuffle}").iterdir() if p.name != "_manifest.json" and not p.name.startswith("."))
        assert len(names) == 6 and local["blurred"] == distributed["blurred"] == 2 and local["successes"] == 10
        for name in names:
            assert (tmp_path / f"local{shuffle}" / name).read_bytes() == (tmp_path / f"spark{shuffle}" / name).read_bytes()
