"""train-dfn: open_clip_train on a trusted pool or webdataset shards, a checkpoint embed loads."""

import io
import tarfile

import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.errors import PoolError, RecipeError
from curate.steps.train_dfn import TrainSettings, train_dfn
from tests.helpers import bad_rows, embed_config, embed_table, good_rows, write_image_pool

TINY = TrainSettings(epochs=2, batch_size=16)


@pytest.mark.slow
def test_train_dfn_writes_a_checkpoint_that_embed_loads_and_fine_tunes_from_it(tmp_path):
    pool = write_image_pool(tmp_path / "trusted", [good_rows(40), bad_rows()])
    info = train_dfn(pool, tmp_path / "dfn", TINY)
    checkpoint = tmp_path / "dfn" / "dfn.pt"
    assert checkpoint.is_file() and info["model"] == "curate-tiny-vit" and info["samples"] == 41
    assert info["skipped"] == {"no_image": 1, "decode_error": 2, "tiny_image": 1, "too_many_pixels": 2, "no_text": 1}
    assert info["final_loss"] is not None and info["steps"] == 2 * (41 // 16)
    assert not (tmp_path / "dfn" / "_work" / "images").exists()

    manifest = pipeline.run_stage("embed", embed_config(pretrained=str(checkpoint)), pool, tmp_path / "out", workers=1)
    assert manifest["weights"] == "file" and manifest["model"] == "curate-tiny-vit"
    pipeline.run_stage("embed", embed_config(), pool, tmp_path / "random", workers=1)
    assert not embed_table(tmp_path / "out").equals(embed_table(tmp_path / "random"))

    mtime = checkpoint.stat().st_mtime_ns
    assert train_dfn(pool, tmp_path / "dfn", TINY)["seconds"] == info["seconds"]  # same settings: kept
    assert checkpoint.stat().st_mtime_ns == mtime

    tuned = train_dfn(pool, tmp_path / "tuned", TrainSettings(epochs=1, batch_size=16, init=str(checkpoint)))
    assert tuned["init"] == str(checkpoint) and (tmp_path / "tuned" / "dfn.pt").is_file()


@pytest.mark.slow
def test_train_dfn_reads_webdataset_shards(tmp_path):
    rows = good_rows(24)
    with tarfile.open(tmp_path / "00000.tar", "w") as archive:
        for index, row in enumerate(rows):
            for suffix, data in (("jpg", row["jpg"]), ("txt", row["text"].encode())):
                member = tarfile.TarInfo(f"{index:06d}.{suffix}")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    info = train_dfn(tmp_path, tmp_path / "dfn", TrainSettings(epochs=1, batch_size=8))
    assert info["samples"] == 24 and (tmp_path / "dfn" / "dfn.pt").is_file()


def test_bad_trusted_sets_and_init_files_fail_before_training(tmp_path):
    pool = write_image_pool(tmp_path / "trusted", [bad_rows()[:3]])
    with pytest.raises(PoolError, match="usable image-text pair"):
        train_dfn(pool, tmp_path / "dfn", TINY)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RecipeError, match="garbage.pt"):
        train_dfn(pool, tmp_path / "dfn", TrainSettings(init=str(tmp_path / "garbage.pt")))
    with pytest.raises(RecipeError, match="unknown open_clip model"):
        train_dfn(pool, tmp_path / "dfn", TrainSettings(model="curate-tiny"))
    assert not (tmp_path / "dfn" / "dfn.pt").exists()
    assert pq.read_table(pool / "00000.parquet").num_rows == 3
