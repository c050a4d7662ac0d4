"""The demo's evaluation tasks, in CLIP_benchmark's webdataset layout (`curate demo-tasks`).

Drawn like the demo pool (curate.demo.draw, curate.demo.captions) but from their own seed, so no
image or caption of a task is in the pool or the trusted set. Four tasks:

- ``shapes``: zero-shot classification of the 24 drawn objects, the same number of images per
  class (the pool is Zipfian; the task is balanced, so a model that learned only the head loses);
- ``colours``: the object's colour; ``backgrounds``: the background pattern;
- ``retrieval``: image-text retrieval with one held-out English caption per image.

Layout (what ``clip_benchmark``'s ``wds/`` datasets read, and DataComp's evaluation sets use)::

    TASKS/<task>/test/0.tar ... (KEY.png + KEY.cls, or KEY.png + KEY.txt for retrieval)
    TASKS/<task>/test/nshards.txt
    TASKS/<task>/classnames.txt, zeroshot_classification_templates.txt   (classification)
    TASKS/<task>/dataset_type.txt                                          ("retrieval")

Images are rendered at 224..300 px and stored at ``IMAGE_SIDE`` (the demo models read 64 px).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
from pathlib import Path

import numpy as np

from curate.demo import captions, draw
from curate.runio import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

TASK_SEED = 2_000_003  # the pool uses 0 (its seed) and the trusted set 1,000,003
IMAGE_SIDE = 96
PER_CLASS = {"shapes": 20, "colours": 30, "backgrounds": 50}
RETRIEVAL_IMAGES = 400
BACKGROUND_NAMES = {"plain": "plain", "stripes": "striped", "gradient": "gradient", "checkerboard": "checkered",
                    "noise": "noisy", "dots": "dotted"}
TEMPLATES = {
    "shapes": ("a drawing of a {c}.", "a picture of a {c}.", "an illustration of a {c}.", "clip art of a {c}.",
               "an icon of a {c}."),
    "colours": ("a drawing of something {c}.", "a {c} shape.", "a picture of a {c} object.", "clip art in {c}."),
    "backgrounds": ("a drawing on a {c} background.", "an icon against a {c} background.",
                    "a picture with a {c} background."),
}


def task_classes(task: str) -> list[str]:
    return {"shapes": list(draw.OBJECTS), "colours": list(draw.COLOURS),
            "backgrounds": [BACKGROUND_NAMES[b] for b in draw.BACKGROUNDS]}[task]


def write_demo_tasks(out: Path, seed: int = TASK_SEED, scale: float = 1.0) -> dict[str, int]:
    """Write the four tasks under OUT; the number of test samples per task. ``scale`` shrinks
    them (tests); a finished task directory (its nshards.txt written last) is kept."""
    out = Path(out)
    sizes = {}
    for index, task in enumerate((*PER_CLASS, "retrieval")):
        directory = out / task
        if (directory / "test" / "nshards.txt").is_file():
            sizes[task] = _count(directory)
            continue
        directory.mkdir(parents=True, exist_ok=True)
        if task == "retrieval":
            samples = list(_retrieval_samples(seed + index, max(8, round(RETRIEVAL_IMAGES * scale))))
            atomic_write_text("retrieval\n", directory / "dataset_type.txt")
        else:
            samples = list(_classification_samples(task, seed + index, max(2, round(PER_CLASS[task] * scale))))
            atomic_write_text("\n".join(task_classes(task)) + "\n", directory / "classnames.txt")
            atomic_write_text("\n".join(TEMPLATES[task]) + "\n", directory / "zeroshot_classification_templates.txt")
        (directory / "test").mkdir(exist_ok=True)
        with atomic_path(directory / "test" / "0.tar") as tmp, tarfile.open(tmp, "w") as archive:
            for key, members in samples:
                for suffix, data in members:
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        atomic_write_text("1\n", directory / "test" / "nshards.txt")
        sizes[task] = len(samples)
        log.info("demo task %s: %d test samples in %s", task, len(samples), directory)
    return sizes


def _count(directory: Path) -> int:
    with tarfile.open(directory / "test" / "0.tar") as archive:
        return sum(name.endswith(".png") for name in archive.getnames())


def _image(rng: np.random.Generator, concept: str, colour: str,
           background: str | None = None) -> tuple[draw.Scene, bytes]:
    width, height = int(rng.integers(224, 301)), int(rng.integers(224, 301))
    scene = draw.random_scene(rng, concept, colour, width, height)
    if background is not None:
        scene = dataclasses.replace(scene, background=background)
    image = draw.render(scene)
    image.thumbnail((IMAGE_SIDE * max(width, height) // min(width, height),) * 2)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return scene, buffer.getvalue()


def _classification_samples(task: str, seed: int, per_class: int):
    classes = task_classes(task)
    objects, colours = list(draw.OBJECTS), list(draw.COLOURS)
    order = np.random.default_rng([seed, 1 << 40]).permutation(len(classes) * per_class)
    for position, item in enumerate(order):
        label = int(item) // per_class
        rng = np.random.default_rng([seed, int(item)])
        concept = classes[label] if task == "shapes" else objects[int(rng.integers(len(objects)))]
        colour = classes[label] if task == "colours" else colours[int(rng.integers(len(colours)))]
        background = draw.BACKGROUNDS[label] if task == "backgrounds" else None
        scene, data = _image(rng, concept, colour, background)
        yield f"{position:06d}", [("png", data), ("cls", str(label).encode())]


def _retrieval_samples(seed: int, count: int):
    book = captions.CaptionBook(limit=1)
    objects, colours = list(draw.OBJECTS), list(draw.COLOURS)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        scene, data = _image(rng, objects[int(rng.integers(len(objects)))], colours[int(rng.integers(len(colours)))])
        caption = book.pick(rng, captions.english_candidates(scene.concept, scene.colour, scene.background,
                                                             scene.bg_colour, draw.size_word(scene),
                                                             draw.position_phrase(scene)))
        yield f"{index:06d}", [("png", data), ("txt", caption.encode())]
