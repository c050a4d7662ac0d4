"""The resharded subset trains with open_clip's own trainer (open_clip_train, webdataset loader)."""

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.demo.run import prepare_trusted
from curate.steps.reshard import ReshardConfig, reshard
from curate.steps.train_dfn import run_trainer
from curate.uid import uid_pairs, write_datacomp_subset

EPOCHS, BATCH = 6, 32
STEP = re.compile(r"Train Epoch: (\d+) \[.*\].* Loss: ([\d.]+) \(")


@pytest.mark.slow
def test_open_clip_train_reads_the_shards_and_its_loss_goes_down(tmp_path):
    prepare_trusted(tmp_path / "source", tmp_path / "pool", 320, seed=7)  # demo images and captions
    uids = pq.read_table(tmp_path / "pool" / "00000.parquet", columns=["uid"]).column("uid")
    (tmp_path / "run").mkdir()
    write_datacomp_subset(np.concatenate([uid_pairs(uids), uid_pairs(uids[:32])]), tmp_path / "run" / "subset.npy")
    manifest = reshard(tmp_path / "run", tmp_path / "shards", ReshardConfig(shard_size=128, shuffle=True),
                       pool=tmp_path / "pool", workers=1)
    assert manifest["successes"] == 352 and manifest["shards"] == 3

    shards = sorted(str(path) for path in (tmp_path / "shards").glob("*.tar"))
    args = ["--dataset-type", "webdataset", "--train-data", "::".join(shards), "--train-num-samples", "352",
            "--model", "curate-tiny-vit", "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--lr", "2e-3",
            "--wd", "0.1", "--warmup", "5", "--seed", "0", "--workers", "0", "--device", "cpu", "--precision", "fp32",
            "--logs", str(tmp_path / "logs"), "--name", "run", "--save-frequency", "0", "--report-to", "",
            "--log-every-n-steps", "1"]
    run_trainer(args, tmp_path / "train.log", EPOCHS)  # raises with the log's tail if the trainer fails

    steps = [(int(epoch), float(loss)) for epoch, loss in STEP.findall((tmp_path / "train.log").read_text())]
    first = [loss for epoch, loss in steps if epoch == 0]
    last = [loss for epoch, loss in steps if epoch == EPOCHS - 1]
    assert len(first) == len(last) == 352 // BATCH, steps
    # 0.85: on 2 shared cores one full-suite run measured 0.81 where it passes alone; the trainer is not bit-deterministic
    assert np.mean(last) < 0.85 * np.mean(first), steps  # ln(32) = 3.47 at the start
