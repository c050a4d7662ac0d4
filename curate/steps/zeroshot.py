"""Zero-shot evaluation of a CLIP checkpoint with CLIP_benchmark, on tasks in its webdataset layout.

A task directory (what ``clip_benchmark``'s ``wds/`` datasets read, and what DataComp's
``download_evalsets.py`` writes as ``wds_<task>_test``) holds ``test/nshards.txt`` and
``test/0.tar ...``; classification tasks add ``classnames.txt`` and
``zeroshot_classification_templates.txt``, retrieval tasks say ``retrieval`` in ``dataset_type.txt``.
TASKS is one such directory or a directory of them.

Metrics are CLIP_benchmark's own functions (``zeroshot_classification.evaluate``,
``zeroshot_retrieval.evaluate``): ``acc1``, ``acc5`` (NaN under 5 classes) and
``mean_per_class_recall``; ``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` (k = 1, 5).
Each task's *main metric* is DataComp's (tasklist.yml): ``mean_per_class_recall`` for Caltech-101,
FGVC Aircraft, Flowers and Pets, ``mean_recall@1`` (the mean of image and text recall@1) for
retrieval, ``acc1`` otherwise. Five DataComp tasks use metrics of DataComp's own code (WinoGAViL,
iWildCam, FMoW, Dollar Street, GeoDE); here they get ``acc1`` and ``datacomp_metric: false``, so an
average over DataComp's 38 tasks computed here differs from DataComp's on those five.

Compatibility: CLIP_benchmark 1.6.2's ``zeroshot_classification.accuracy`` calls ``float()`` on a
one-element array, which numpy >= 2.4 refuses; while a task is evaluated it is replaced by
``topk_accuracy`` (the same count, as a Python float), the rest of CLIP_benchmark runs as shipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from curate.errors import RecipeError
from curate.fingerprint import file_signature
from curate.models import clip as models

log = logging.getLogger(__name__)

MEAN_PER_CLASS = ("caltech101", "fgvc_aircraft", "flowers", "pets")
DATACOMP_OWN_METRIC = ("winogavil", "iwildcam", "fmow", "dollar_street", "geode")
RECALL_K = (1, 5)


def task_name(directory: Path) -> str:
    """``wds_vtab-caltech101_test`` (DataComp's download) -> ``vtab/caltech101``; other names as they are."""
    name = directory.name
    if name.startswith("wds_") and name.endswith("_test"):
        name = name[4:-5].replace("-", "/", 1)
    return name


def find_tasks(tasks: Path) -> dict[str, Path]:
    """Task name -> directory, for TASKS itself or each subdirectory in CLIP_benchmark's layout."""
    tasks = Path(tasks)
    if not tasks.is_dir():
        raise RecipeError(f"evaluate: task directory {tasks} does not exist")
    candidates = [tasks] if (tasks / "test").is_dir() else sorted(p for p in tasks.iterdir() if (p / "test").is_dir())
    if not candidates:
        raise RecipeError(f"evaluate: {tasks} holds no task (a directory with test/nshards.txt and test/*.tar)")
    found = {}
    for directory in candidates:
        check_task(directory)
        found[task_name(directory)] = directory
    return found


def task_type(directory: Path) -> str:
    kind = directory / "dataset_type.txt"
    return kind.read_text().strip().lower() if kind.is_file() else "classification"


def check_task(directory: Path) -> None:
    """A clear error for a task CLIP_benchmark would fail on, naming the missing file."""
    nshards = directory / "test" / "nshards.txt"
    if not nshards.is_file():
        raise RecipeError(f"evaluate: task {directory} has no test/nshards.txt")
    count = int(nshards.read_text().strip() or 0)
    missing = [f"test/{i}.tar" for i in range(count) if not (directory / "test" / f"{i}.tar").is_file()]
    if task_type(directory) != "retrieval":
        missing += [f for f in ("classnames.txt", "zeroshot_classification_templates.txt") if not (directory / f).is_file()]
    if missing or count < 1:
        raise RecipeError(f"evaluate: task {directory} is missing {missing or ['test shards (nshards.txt is 0)']}")


def main_metric(name: str, kind: str) -> tuple[str, bool]:
    """(DataComp's main metric for the task, whether it is the one DataComp reports)."""
    short = name.rsplit("/", 1)[-1]
    if kind == "retrieval":
        return "mean_recall@1", True
    if short in MEAN_PER_CLASS:
        return "mean_per_class_recall", True
    return "acc1", not any(own in short for own in DATACOMP_OWN_METRIC)


def topk_accuracy(output, target, topk=(1,)) -> list[float]:
    """Top-k accuracy of logits (n, classes) against labels (n,), for each k: CLIP_benchmark's
    ``accuracy`` without its numpy >= 2.4 incompatibility."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) / len(target) for k in topk]


@contextlib.contextmanager
def numpy_safe_accuracy():
    from clip_benchmark.metrics import zeroshot_classification

    shipped = zeroshot_classification.accuracy
    zeroshot_classification.accuracy = topk_accuracy
    try:
        yield
    finally:
        zeroshot_classification.accuracy = shipped


def tasks_signature(tasks: dict[str, Path]) -> dict[str, list]:
    return {name: [file_signature(p) for p in sorted(d.rglob("*")) if p.is_file()] for name, d in tasks.items()}


def evaluate_checkpoint(model: str, checkpoint: Path, tasks: dict[str, Path], device: str = "auto",
                        batch_size: int = 64) -> list[dict[str, Any]]:
    """Rows (task, metric, value) for every task and metric, main metrics included (``main: True``)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    device = models.resolve_device(device)
    loaded = models.load_model(model, str(checkpoint), device)  # ModelError naming the file if it cannot
    net = loaded.model
    rows = []
    for name, directory in tasks.items():
        kind = task_type(directory)
        with contextlib.redirect_stdout(io.StringIO()):  # CLIP_benchmark prints warnings and tqdm bars
            dataset = build_dataset(f"wds/{name}", root=str(directory), transform=loaded.preprocess, split="test",
                                    download=False, task="zeroshot_retrieval" if kind == "retrieval" else
                                    "zeroshot_classification")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0,
                                             collate_fn=image_captions_collate_fn if kind == "retrieval" else None)
        amp = device.startswith("cuda")
        if kind == "retrieval":
            metrics = zeroshot_retrieval.evaluate(net, loader, loaded.tokenizer, device, amp=amp,
                                                  recall_k_list=list(RECALL_K))
            metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
        else:
            with numpy_safe_accuracy():
                metrics = zeroshot_classification.evaluate(net, loader, loaded.tokenizer, dataset.classes,
                                                           dataset.templates, device, amp=amp)
        metric, datacomp = main_metric(name, kind)
        rows += [{"task": name, "metric": key, "value": float(value), "main": key == metric, "type": kind,
                  "datacomp_metric": datacomp if key == metric else None} for key, value in sorted(metrics.items())]
        log.info("evaluate: %s %s = %.4f", name, metric, metrics[metric])
    return rows
