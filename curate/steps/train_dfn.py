"""`curate train-dfn`: train a data filtering network on a trusted image-text set.

A DFN (Fang et al. 2023, "Data Filtering Networks") is a CLIP model trained on high-quality
data; its image-text cosine then scores a pool (DESIGN.md 4.5). Training is open_clip's own
trainer (``open_clip_train.main``), from scratch or fine-tuning a checkpoint (``init``):

1. the trusted set is a pool (its downloaded rows: image bytes and caption) or webdataset
   ``.tar`` shards. A pool is exported to what open_clip_train reads: a tab-separated csv of
   image paths and captions, images written once at the model's input size (training at 64 px
   from 300 px originals would otherwise spend its time decoding). Images that fail to decode,
   are tiny or are decompression bombs (curate.stages.embed's checks) are skipped and counted;
2. open_clip_train runs in a subprocess of this Python (``python -m curate.steps.train_dfn``, which
   registers curate/model_configs first), its log kept in OUT/_work/train.log and shown on failure;
3. the final weights go to OUT/dfn.pt (a bare state_dict, loadable with ``weights_only``) and
   OUT/dfn.json (model name, data, settings). ``embed`` loads it: ``pretrained: OUT/dfn.pt``.

A finished OUT with the same settings and trusted data is kept (``train_dfn`` returns at once).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from curate.errors import PoolError, TrainingError
from curate.kernels.images import open_image
from curate.models import clip as models
from curate.pool import read_shard, scan_shards
from curate.runio import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

CHECKPOINT, INFO, WORK = "dfn.pt", "dfn.json", "_work"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    # Defaults: the demo's small DFN (a few minutes on 2 CPU cores). Real DFNs train far
    # longer on far more data: Fang et al. train ViT-B/L on 350M trusted pairs.
    model: str = "curate-tiny-vit"
    init: str | None = None          # checkpoint to fine-tune (None: from scratch)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    wd: float = 0.1
    warmup: int | None = None        # steps; None: a tenth of all steps
    seed: int = 0
    device: str = "auto"
    export_size: int | None = None   # shorter side of exported images; None: the model's input size
    loader_workers: int | None = None  # open_clip_train --workers; None: 0 on CPU (no per-epoch
                                       # worker start-up, the cores train), 8 beside a GPU
    image_column: str = "jpg"
    text_column: str = "text"


def train_dfn(trusted: Path, out: Path, settings: TrainSettings = TrainSettings()) -> dict[str, Any]:
    """Train (or keep an identical earlier result) and return the contents of OUT/dfn.json."""
    trusted, out = Path(trusted), Path(out)
    models.resolve(settings.model, settings.init or models.RANDOM)  # a bad name or init file fails here, not in the trainer
    if settings.init:
        models.load_model(settings.model, settings.init, "cpu")
    key = {"settings": asdict(settings), "trusted": source_key(trusted),
           "init_sha256": models.file_sha256(settings.init) if settings.init and Path(settings.init).is_file() else None}
    if (out / CHECKPOINT).is_file() and (out / INFO).is_file() and read_json(out / INFO).get("key") == key:
        log.info("train-dfn: %s is up to date", out / CHECKPOINT)
        return read_json(out / INFO)
    started = time.perf_counter()
    work = out / WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_args, samples, skipped = trainer_data(trusted, work, settings)
    log.info("train-dfn: %s on %d trusted samples (%s), %d epochs of %d steps", settings.model, samples, trusted,
             settings.epochs, samples // min(settings.batch_size, samples))
    run = train_open_clip(data_args, samples, work, out / CHECKPOINT, settings, "train-dfn")
    shutil.rmtree(work / "images", ignore_errors=True)
    info = {**asdict(settings), "trusted": str(trusted), "samples": samples, "skipped": skipped, **run,
            "seconds": round(time.perf_counter() - started, 1),
            "open_clip_torch": metadata.version("open_clip_torch"), "key": key}
    atomic_write_json(info, out / INFO)
    models.load_model(settings.model, str(out / CHECKPOINT), "cpu")  # the result must load in embed
    log.info("train-dfn: wrote %s in %.0fs (final loss %s)", out / CHECKPOINT, info["seconds"], run["final_loss"])
    return info


def train_open_clip(data_args: list[str], samples: int, work: Path, checkpoint: Path, settings: TrainSettings,
                    label: str) -> dict[str, Any]:
    """open_clip_train from scratch (or ``settings.init``) on ``samples`` per epoch; the final
    weights as a bare state_dict at ``checkpoint``; steps, final loss and device."""
    batch_size = min(settings.batch_size, samples)
    steps_per_epoch = samples // batch_size
    steps = settings.epochs * steps_per_epoch
    device = models.resolve_device(settings.device)
    log_every = max(1, steps_per_epoch // 5 if settings.epochs == 1 else steps_per_epoch)
    args = [*data_args, "--model", settings.model, "--batch-size", str(batch_size), "--epochs", str(settings.epochs),
            "--lr", str(settings.lr), "--wd", str(settings.wd), "--seed", str(settings.seed),
            "--warmup", str(settings.warmup if settings.warmup is not None else max(1, steps // 10)),
            "--workers", str(loader_workers(settings, device)), "--device", device,
            "--precision", "amp" if device.startswith("cuda") else "fp32",
            "--logs", str(work / "logs"), "--name", "run", "--save-frequency", "0", "--report-to", "",
            "--log-every-n-steps", str(log_every), *(["--pretrained", str(settings.init)] if settings.init else [])]
    log.info("%s: %d steps of %d on %s", label, steps, batch_size, device)
    final_loss = run_trainer(args, work / "train.log", settings.epochs, label)
    save_checkpoint(work / "logs" / "run" / "checkpoints" / f"epoch_{settings.epochs}.pt", checkpoint)
    return {"steps": steps, "batch_size": batch_size, "final_loss": final_loss, "device": device}


def loader_workers(settings: TrainSettings, device: str) -> int:
    if settings.loader_workers is not None:
        return settings.loader_workers
    return min(8, os.cpu_count() or 1) if device.startswith("cuda") else 0


def source_key(trusted: Path) -> list:
    """Names, sizes and mtimes of the trusted files: retrain when they change."""
    files = [trusted] if trusted.is_file() else sorted(p for p in trusted.iterdir() if p.suffix in (".parquet", ".tar"))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def trainer_data(trusted: Path, work: Path, settings: TrainSettings) -> tuple[list[str], int, dict[str, int]]:
    """open_clip_train's data arguments, the sample count and the skipped samples by reason."""
    tars = [trusted] if trusted.suffix == ".tar" else sorted(trusted.glob("*.tar")) if trusted.is_dir() else []
    if tars and not (trusted.is_dir() and list(trusted.glob("*.parquet"))):
        samples = sum(count_tar_samples(path) for path in tars)
        if not samples:
            raise PoolError(f"{trusted}: no image-text samples in {len(tars)} tar file(s)")
        return (["--dataset-type", "webdataset", "--train-data", "::".join(map(str, tars)),
                 "--train-num-samples", str(samples)], samples, {})
    csv_path, samples, skipped = export_pool(trusted, work, settings)
    if samples < 2:
        raise PoolError(f"{trusted}: {samples} usable image-text pair(s); training needs at least 2 (skipped: {skipped})")
    return (["--dataset-type", "csv", "--train-data", str(csv_path), "--csv-separator", "\t",
             "--csv-img-key", "filepath", "--csv-caption-key", "title"], samples, skipped)


def count_tar_samples(path: Path) -> int:
    """Samples (keys with an image) in a webdataset shard, from the tar headers."""
    with tarfile.open(path) as archive:
        return len({name.rsplit(".", 1)[0] for name in archive.getnames()
                    if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS})


def export_pool(pool: Path, work: Path, settings: TrainSettings) -> tuple[Path, int, dict[str, int]]:
    """Write each usable row's image (resized) and caption for open_clip_train's csv reader."""
    size = settings.export_size or models.model_image_size(settings.model)
    rows, skipped = export_rows(pool, work / "images", size, settings.image_column, settings.text_column)
    csv_path = work / "train.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows((path, text) for _, path, text in rows)
    if skipped:
        log.warning("train-dfn: skipped %d trusted sample(s): %s", sum(skipped.values()), dict(skipped))
    return csv_path, len(rows), dict(skipped)


def export_rows(pool: Path, images_dir: Path, size: int, image_column: str = "jpg",
                text_column: str = "text") -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """Every downloaded row's image with a caption, decoded with embed's guards and written as
    images_dir/<uid>.png at ``size``: (uid, path, caption with whitespace collapsed) rows, and the
    rows skipped by reason."""
    images_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], Counter()
    with ThreadPoolExecutor(4) as executor:
        for shard in [s.path for s in scan_shards(pool)]:  # scan: indexes tar images if needed
            table = read_shard(shard, None)
            for column in ("uid", image_column, text_column):
                if column not in table.column_names:
                    raise PoolError(f"{shard}: missing column {column!r}; training needs uid, image bytes and text")
            uids, texts = table.column("uid").to_pylist(), table.column(text_column).to_pylist()
            status = table.column("status").to_pylist() if "status" in table.column_names else [None] * len(uids)
            images = table.column(image_column).to_pylist()
            jobs = [executor.submit(export_image, data, images_dir / f"{uid}.png", size)
                    if state in (None, "success") and text else None
                    for uid, data, text, state in zip(uids, images, texts, status)]
            for uid, text, state, job in zip(uids, texts, status, jobs):
                reason = "not_downloaded" if state not in (None, "success") else "no_text" if not text else job.result()
                if reason:
                    skipped[reason] += 1
                else:
                    rows.append((uid, str(images_dir / f"{uid}.png"), " ".join(text.split())))
    return rows, dict(skipped)


def export_image(data: bytes | None, path: Path, size: int) -> str | None:
    """Decode with embed's guards, shrink the shorter side to ``size``, save as PNG; or the reason."""
    from PIL import Image

    image, reason = open_image(data)
    if image is None:
        return reason
    image = image.convert("RGB")
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    image.save(path)
    return None


def run_trainer(args: list[str], log_path: Path, epochs: int, label: str = "train-dfn") -> float | None:
    """Run open_clip_train in a subprocess; log epochs (and, for one epoch, its progress lines);
    on failure raise with the log's tail."""
    command = [sys.executable, "-m", "curate.steps.train_dfn", *args]
    loss = None
    # the trainer imports wandb, which leaves temporary directories behind: give it its own TMPDIR
    with open(log_path, "w") as log_file, tempfile.TemporaryDirectory(prefix="curate-train-dfn-") as scratch:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**models.openmp_env(os.environ), "TMPDIR": scratch})
        for line in process.stdout:
            log_file.write(line)
            if match := re.search(r"Train Epoch: (\d+) .*\((\d+)%\).*Loss: [\d.]+ \(([\d.]+)\)", line):
                loss = float(match.group(3))
                if match.group(2) == "100":
                    log.info("%s: epoch %d/%d, mean loss %.4f", label, int(match.group(1)) + 1, epochs, loss)
                elif epochs == 1:
                    log.info("%s: %s%% of the steps, mean loss %.4f", label, match.group(2), loss)
        returncode = process.wait()
    if returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise TrainingError(f"open_clip_train failed (exit {returncode}); the last lines of {log_path}:\n{tail}")
    return loss


def save_checkpoint(trainer_checkpoint: Path, target: Path) -> None:
    """open_clip_train's checkpoint (epoch, optimizer, state_dict) -> a bare state_dict, atomically."""
    import torch

    if not trainer_checkpoint.is_file():
        raise TrainingError(f"open_clip_train wrote no final checkpoint {trainer_checkpoint}")
    state = torch.load(trainer_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    with atomic_path(target) as tmp:
        torch.save(state, tmp)


def trainer_main(argv: list[str]) -> None:
    """``python -m curate.steps.train_dfn ARGS``: open_clip_train.main with curate's model configs."""
    models.register_configs()
    from open_clip_train.main import main

    result = main(argv)
    if result not in (None, 0):
        sys.exit(1)


if __name__ == "__main__":
    trainer_main(sys.argv[1:])
