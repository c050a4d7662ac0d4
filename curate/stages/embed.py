"""`embed`: image and text embeddings of a pool with an open_clip model (DESIGN.md 4.5, 5, 6).

The filter-network score of Fang et al. 2023 ("Data Filtering Networks") and the CLIP score of
DataComp (Gadre et al. 2023) are cosines of these embeddings; SemDeDup and the image-based
baseline cluster them. DataComp pools imported with their npz skip this stage: their
``embeddings/b32`` and ``embeddings/l14`` sidecars are the embeddings.

Columns added (a DataComp-style sidecar is uid + these two embedding columns):

- ``embed_image``, ``embed_text``: L2-normalised float16, the bytes of
  ``curate.embeddings.encode`` (2 * dim bytes per value; read with ``decode``); null where
  there is no embedding. Declared as plain ``binary``: a stage's schema is fixed while the width
  depends on the model, and Spark writes BINARY either way, so both engines store the same type;
- ``embed_reason``: null, or the first problem of the sample: no_image, too_many_pixels
  (header says more than ``max_pixels``: never decoded, so no decompression bomb),
  tiny_image (a side under ``min_side``), decode_error, no_text, non_finite / zero_norm (the
  model's output). The other modality is still embedded when one fails.

How: rows go through the model ``batch_size`` at a time while a thread pool decodes and
preprocesses the next batch (PIL and torchvision release the GIL) and tokenizes its texts.
Every batch is padded to exactly ``batch_size`` rows, so a sample's embedding does not depend
on which rows share its batch: on one machine, local and Spark runs and any partitioning give
bit-identical embeddings. On a GPU (``device: auto``) the model runs under fp16 autocast.
The model, its weights, dimension and preprocessing are recorded in OUT/embed/_manifest.json
(``describe``), and are part of the stage's fingerprint: new weights at the same path recompute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curate.contract import Stage, file_field
from curate.errors import RecipeError
from curate.kernels.embeddings import encode
from curate.kernels.images import MAX_PIXELS, MIN_SIDE, open_image
from curate.kernels.vectors import normalise_model_output
from curate.models import clip as models

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    # No paper default for the model: the demo's small DFN architecture (curate/model_configs).
    # A DataComp-style CLIP score uses model ViT-B-32-quickgelu or ViT-L-14 with pretrained openai.
    model: str = "curate-tiny-vit"     # open_clip name, or an hf-hub: / local-dir: id
    pretrained: str | None = file_field()  # None (random), tag, .pt/.safetensors path, hf-hub:/local-dir: id
    image_column: str = "jpg"          # image bytes (img2dataset's column)
    text_column: str = "text"
    device: str = "auto"               # auto: cuda when visible, else cpu
    precision: str = "auto"            # auto: fp32 on CPU, fp16 autocast on GPU
    batch_size: int = 64               # rows per forward pass (part of the result's identity)
    processes: int = 1                 # local-engine processes, each with its own model copy
    threads: int = 0                   # torch threads per process; 0: OMP_NUM_THREADS, else cores / processes
    decode_threads: int = 0            # image decoding threads per process; 0: as many as torch threads
    max_pixels: int = MAX_PIXELS       # larger images (by their header) are not decoded
    min_side: int = MIN_SIDE           # smaller images carry no usable content
    max_text_chars: int = 20_000       # captions are cut here before tokenizing (context is ~77 tokens)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise RecipeError(f"embed: precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "processes", "max_pixels", "min_side", "max_text_chars"):
            if getattr(self, name) < 1:
                raise RecipeError(f"embed: {name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0 or self.decode_threads < 0:
            raise RecipeError("embed: threads and decode_threads must be >= 0 (0 = automatic)")


def torch_threads(cfg: EmbedConfig) -> int:
    """Threads for this process: the config, else OMP_NUM_THREADS (Spark sets it to
    spark.task.cpus), else the machine's cores shared by the local engine's processes."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // cfg.processes)


def pixel_transform(preprocess: Any) -> Any:
    """open_clip's inference transform, its final ToTensor + Normalize done in numpy with the
    same float32 operations (identical values): torch ops in the decoding threads would start
    their own OpenMP thread teams and fight the model's threads for the cores."""
    import torch
    from torchvision import transforms

    steps = list(getattr(preprocess, "transforms", ()))
    if len(steps) < 2 or not isinstance(steps[-2], transforms.ToTensor) or not isinstance(steps[-1], transforms.Normalize):
        return preprocess
    geometric = transforms.Compose(steps[:-2])
    mean, std = (np.asarray(v, dtype=np.float32) for v in (steps[-1].mean, steps[-1].std))

    def transform(image: Any) -> Any:
        image = geometric(image)
        if image.mode != "RGB":
            return transforms.Compose(steps[-2:])(image)
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))

    return transform


def prepare_image(data: bytes | None, preprocess: Any, cfg: EmbedConfig) -> tuple[Any, str | None]:
    """Bytes -> the model's input tensor, or None and the reason."""
    image, reason = open_image(data, cfg.max_pixels, cfg.min_side)
    if image is None:
        return None, reason
    try:
        return preprocess(image), None
    except Exception:  # a decodable header with unusable pixel data (e.g. a broken palette)
        return None, "decode_error"


@dataclass
class PendingBatch:
    start: int
    size: int
    images: list[Future]      # each -> (tensor | None, reason | None)
    tokens: Future            # -> (size, context_length) tensor
    has_text: np.ndarray


def submit_batch(pool: ThreadPoolExecutor, table: pa.Table, start: int, loaded: models.LoadedModel,
                 transform: Any, cfg: EmbedConfig) -> PendingBatch:
    rows = table.slice(start, cfg.batch_size)
    images = [pool.submit(prepare_image, data, transform, cfg)
              for data in rows.column(cfg.image_column).to_pylist()]
    texts = rows.column(cfg.text_column).to_pylist()
    has_text = np.array([text is not None for text in texts], dtype=bool)
    clipped = [(text or "")[: cfg.max_text_chars] for text in texts]
    return PendingBatch(start, rows.num_rows, images, pool.submit(loaded.tokenizer, clipped), has_text)


def autocast(device: str, precision: str):
    import torch

    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.split(":")[0], dtype=dtype)


def run_tower(encode_fn, inputs: list, blank: Any, loaded: models.LoadedModel, cfg: EmbedConfig) -> np.ndarray:
    """One padded forward pass: exactly batch_size rows, whatever the real count."""
    import torch

    batch = torch.stack([blank if x is None else x for x in inputs] + [blank] * (cfg.batch_size - len(inputs)))
    with torch.inference_mode(), autocast(loaded.device, cfg.precision):
        features = encode_fn(batch.to(loaded.device, non_blocking=True))
    return features.float().cpu().numpy()[: len(inputs)]


def embed_batch(pending: PendingBatch, loaded: models.LoadedModel, cfg: EmbedConfig,
                out: dict[str, np.ndarray]) -> None:
    """Run both towers on one batch and store the results in ``out`` at the batch's rows."""
    import torch

    span = slice(pending.start, pending.start + pending.size)
    prepared = [future.result() for future in pending.images]
    pixels = [tensor for tensor, _ in prepared]
    out["image_reason"][span] = [reason for _, reason in prepared]
    template = next((p for p in pixels if p is not None), None)
    if template is not None:
        features, problems = normalise_model_output(run_tower(loaded.model.encode_image, pixels, torch.zeros_like(template), loaded, cfg))
        out["image"][span] = features
        record(out["image_reason"], span, problems, np.array([p is not None for p in pixels]))
    tokens = pending.tokens.result()
    out["text_reason"][span] = np.where(pending.has_text, None, "no_text")
    if pending.has_text.any():
        rows = [tokens[i] for i in range(pending.size)]
        features, problems = normalise_model_output(run_tower(loaded.model.encode_text, rows, torch.zeros_like(tokens[0]), loaded, cfg))
        out["text"][span] = features
        record(out["text_reason"], span, problems, pending.has_text)


def record(reasons: np.ndarray, span: slice, problems: list[tuple[str, np.ndarray]], embedded: np.ndarray) -> None:
    view = reasons[span]
    for name, mask in problems:
        view[mask & embedded & (view == None)] = name  # noqa: E711 (elementwise on an object array)


def apply(table: pa.Table, cfg: EmbedConfig, artifact: pa.Table | None) -> pa.Table:
    from PIL import Image

    torch = models.import_torch()
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # max_pixels decides
    loaded = models.load_model(cfg.model, cfg.pretrained, models.resolve_device(cfg.device))
    threads = torch_threads(cfg)
    torch.set_num_threads(threads)
    n = table.num_rows
    out = {"image": np.zeros((n, loaded.dim), np.float32), "text": np.zeros((n, loaded.dim), np.float32),
           "image_reason": np.full(n, None, dtype=object), "text_reason": np.full(n, None, dtype=object)}
    starts = list(range(0, n, cfg.batch_size))
    with ThreadPoolExecutor(cfg.decode_threads or threads, thread_name_prefix="embed-decode") as pool, \
            tqdm(total=n, desc="embed", unit="img", leave=False, disable=None) as progress:
        transform = pixel_transform(loaded.preprocess)
        pending = submit_batch(pool, table, 0, loaded, transform, cfg) if n else None
        for index in range(len(starts)):
            current = pending
            if index + 1 < len(starts):  # decode the next batch while the model runs this one
                pending = submit_batch(pool, table, starts[index + 1], loaded, transform, cfg)
            embed_batch(current, loaded, cfg, out)
            progress.update(current.size)
    return result_table(out)


def result_table(out: dict[str, np.ndarray]) -> pa.Table:
    image_ok, text_ok = out["image_reason"] == None, out["text_reason"] == None  # noqa: E711
    reason = np.where(image_ok, out["text_reason"], out["image_reason"])
    return pa.table({"embed_image": encode(out["image"], image_ok), "embed_text": encode(out["text"], text_ok),
                     "embed_reason": pa.array(reason.tolist(), pa.string())})


def describe(cfg: EmbedConfig) -> dict[str, Any]:
    """The manifest's model fields; loading here also stops a bad model name before any work."""
    return models.load_model(cfg.model, cfg.pretrained, models.resolve_device(cfg.device)).description


def reads(cfg: EmbedConfig) -> tuple[str, ...]:
    return (cfg.image_column, cfg.text_column)


def max_workers(cfg: EmbedConfig) -> int:
    """One process per model copy: torch threads use the cores (``processes`` > 1 for several GPUs)."""
    return cfg.processes


STAGE = Stage(
    name="embed",
    config=EmbedConfig,
    reads=reads,
    adds=pa.schema([("embed_image", pa.binary()), ("embed_text", pa.binary()), ("embed_reason", pa.string())]),
    apply=apply,
    summary="open_clip image and text embeddings (float16, L2-normalised) with a reason where there is none",
    describe=describe,
    max_workers=max_workers,
)
