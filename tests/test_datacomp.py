"""curate.demo.synthetic (DataComp's released format) and curate.steps.datacomp (its importer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.demo.synthetic import write_datacomp_pool
from curate.errors import PoolError
from curate.kernels.embeddings import decode
from curate.pool import POOL_INFO
from curate.steps.datacomp import import_datacomp
from curate.uid import malformed_uid_rows

DIMS = {"b32": 512, "l14": 768}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_datacomp_pool(tmp_path_factory.mktemp("datacomp"), shards=2, rows_per_shard=400, seed=3)


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pool") / "pool"
    return out, import_datacomp(source, out)


def test_released_format(source):
    table = pq.read_table(source / "00000000.parquet")
    assert table.schema.names == ["uid", "url", "text", "original_width", "original_height",
                                  "clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes", "sha256"]
    assert table.schema.field("original_width").type == pa.int64()
    assert table.schema.field("clip_b32_similarity_score").type == pa.float32()
    assert len(malformed_uid_rows(table.column("uid"))) == 0
    with np.load(source / "00000000.npz") as arrays:
        assert sorted(arrays.files) == ["b32_img", "b32_txt", "l14_img", "l14_txt"]
        for model, dim in DIMS.items():
            image, text = (arrays[f"{model}_{kind}"].astype(np.float32) for kind in ("img", "txt"))
            assert arrays[f"{model}_img"].dtype == np.float16 and image.shape == (400, dim)
            assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-3)
            assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3)
            scores = table.column(f"clip_{model}_similarity_score").to_numpy()
            assert np.allclose(scores, np.einsum("ij,ij->i", image, text), atol=1e-6)
            assert 0.1 < scores.mean() < 0.35


def test_realistic_mix(source):
    table = pa.concat_tables([pq.read_table(path) for path in sorted(source.glob("*.parquet"))])
    width, height = table.column("original_width").to_numpy(), table.column("original_height").to_numpy()
    assert (np.minimum(width, height) < 200).any() and (np.maximum(width, height) / np.minimum(width, height) > 3).any()
    texts = table.column("text").to_pylist()
    assert any(len(t) <= 5 for t in texts) and any(not t.isascii() for t in texts)
    assert sum(t.startswith(("a ", "an ", "the ")) for t in texts) > len(texts) / 4
    boxes = [box for row in table.column("face_bboxes").to_pylist() for box in row]
    assert boxes and all(len(b) == 4 and 0 <= b[0] <= b[2] <= 1 and 0 <= b[1] <= b[3] <= 1 for b in boxes)
    assert len(set(table.column("uid").to_pylist())) == table.num_rows


def test_deterministic_for_a_seed(tmp_path):
    first = write_datacomp_pool(tmp_path / "a", shards=1, rows_per_shard=50, seed=7)
    second = write_datacomp_pool(tmp_path / "b", shards=1, rows_per_shard=50, seed=7)
    other = write_datacomp_pool(tmp_path / "c", shards=1, rows_per_shard=50, seed=8)
    assert pq.read_table(first / "00000000.parquet").equals(pq.read_table(second / "00000000.parquet"))
    assert (first / "00000000.npz").read_bytes() == (second / "00000000.npz").read_bytes()
    assert not pq.read_table(first / "00000000.parquet").equals(pq.read_table(other / "00000000.parquet"))


def test_round_trip_metadata_and_embeddings_bit_for_bit(source, imported):
    out, info = imported
    assert info["rows"] == 800 and info["shards"] == 2 and set(info["embeddings"]) == {"b32", "l14"}
    assert json.loads((out / POOL_INFO).read_text())["rows"] == 800
    for index, parquet in enumerate(sorted(source.glob("*.parquet"))):
        metadata = pq.read_table(out / parquet.name)
        assert metadata.equals(pq.read_table(parquet))
        with np.load(parquet.with_suffix(".npz")) as arrays:
            for model, dim in DIMS.items():
                sidecar = pq.read_table(out / "embeddings" / model / f"part-{index:05d}.parquet")
                assert sidecar.column("uid").equals(metadata.column("uid"))
                for column, kind in (("image_emb", "img"), ("text_emb", "txt")):
                    assert sidecar.schema.field(column).type == pa.binary(2 * dim)
                    values = decode(sidecar.column(column))
                    assert np.array_equal(values.view(np.uint16), arrays[f"{model}_{kind}"].view(np.uint16))


def test_manifests(imported):
    out, _ = imported
    for model, name, dim in (("b32", "ViT-B-32", 512), ("l14", "ViT-L-14", 768)):
        manifest = json.loads((out / "embeddings" / model / "_manifest.json").read_text())
        assert (manifest["model"], manifest["pretrained"], manifest["dim"], manifest["source"]) == (
            name, "openai", dim, "datacomp npz")


def test_rerun_skips_finished_shards(source, imported, monkeypatch):
    out, info = imported
    monkeypatch.setattr("curate.steps.datacomp.import_shard", lambda *a: pytest.fail("shard imported twice"))
    assert import_datacomp(source, out) == info


def test_only_b32(tmp_path):
    src = write_datacomp_pool(tmp_path / "src", shards=1, rows_per_shard=20, models=("b32",))
    info = import_datacomp(src, tmp_path / "out")
    assert list(info["embeddings"]) == ["b32"]
    assert (tmp_path / "out" / "embeddings" / "b32" / "part-00000.parquet").exists()
    assert not (tmp_path / "out" / "embeddings" / "l14").exists()


@pytest.fixture
def small(tmp_path) -> Path:
    return write_datacomp_pool(tmp_path / "src", shards=2, rows_per_shard=30, seed=1)


def rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    content.update(changes)
    content = {name: array for name, array in content.items() if array is not None}
    with open(path, "wb") as handle:
        np.savez(handle, **content)


def test_row_count_mismatch_names_both_files_and_counts(small, tmp_path):
    npz = small / "00000001.npz"
    with np.load(npz) as arrays:
        rewrite_npz(npz, b32_img=arrays["b32_img"][:29], b32_txt=arrays["b32_txt"][:29])
    with pytest.raises(PoolError, match=r"00000001\.npz b32_img has 29 rows but .*00000001\.parquet has 30"):
        import_datacomp(small, tmp_path / "out")
    assert not (tmp_path / "out" / "00000000.parquet").exists()  # checked before anything is written


def test_missing_npz(small, tmp_path):
    (small / "00000001.npz").unlink()
    with pytest.raises(PoolError, match=r"00000001\.parquet: no embeddings file 00000001\.npz"):
        import_datacomp(small, tmp_path / "out")


def test_wrong_dimension(small, tmp_path):
    rewrite_npz(small / "00000000.npz", l14_img=np.zeros((30, 512), np.float16))
    with pytest.raises(PoolError, match=r"00000000\.npz: l14_img has shape \(30, 512\), expected \(rows, 768\)"):
        import_datacomp(small, tmp_path / "out")


def test_models_must_agree_across_shards(small, tmp_path):
    rewrite_npz(small / "00000001.npz", l14_img=None, l14_txt=None)
    with pytest.raises(PoolError, match="shards disagree on which embeddings"):
        import_datacomp(small, tmp_path / "out")


def test_truncated_parquet(small, tmp_path):
    path = small / "00000001.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PoolError, match=r"00000001\.parquet: not a readable parquet file"):
        import_datacomp(small, tmp_path / "out")


def test_no_parquet_in_src(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(PoolError, match=r"src: empty pool, no \*\.parquet"):
        import_datacomp(tmp_path / "src", tmp_path / "out")


def test_duplicate_uid_across_shards(small, tmp_path):
    first = pq.read_table(small / "00000000.parquet")
    second = pq.read_table(small / "00000001.parquet")
    uids = second.column("uid").to_pylist()
    uids[5] = first.column("uid")[2].as_py()
    pq.write_table(second.set_column(0, "uid", pa.array(uids)), small / "00000001.parquet")
    with pytest.raises(PoolError, match=r"duplicate uid: .*00000001\.parquet row 5 .*00000000\.parquet row 2"):
        import_datacomp(small, tmp_path / "out")
