"""Benchmark: `embed` throughput against the model's own forward-only throughput, same run.

For each model (the demo's curate-tiny-vit and ViT-B-32, random weights: speed does not
depend on them), on demo-pool images (224-400 px JPEG/PNG with captions):

- baseline: the model's forward passes alone on pre-decoded, pre-tokenized, padded batches
  (encode_image, encode_text), in this process, with the same threads;
- embed: the stage's ``apply`` on the raw table (decode + preprocess + tokenize in threads,
  overlapped with the model, plus output encoding), what the engines run per partition.

Rounds alternate baseline and embed and the best of each is kept (the machine is shared).
Prints images/s and texts/s (every sample has one of each), the ratio embed / forward-only
(target for ViT-B-32: >= 0.9, decoding and I/O hidden behind the model) and, per model, where
the time goes: single-thread cost per sample of each step.

    .venv/bin/python bench/bench_embed.py [--models curate-tiny-vit ViT-B-32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.demo.pool import make_demo_pool
from curate.models import clip as models
from curate.stages import embed

SAMPLES = {"curate-tiny-vit": 2048, "ViT-B-32": 192}


def demo_table(n: int) -> pa.Table:
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as scratch:
        source = Path(scratch)
        make_demo_pool(source, n=n, seed=7, clean_only=True)
        urls = pq.read_table(source / "urls.parquet")
        images = [(source / "images" / url.rsplit("/", 1)[-1]).read_bytes() for url in urls.column("url").to_pylist()]
    return pa.table({"jpg": pa.array(images, pa.binary()), "text": urls.column("caption")})


def forward_only(loaded: models.LoadedModel, pixels: list, tokens, cfg: embed.EmbedConfig) -> tuple[float, float]:
    """Seconds for the image and the text forward passes alone, batch by batch, padded."""
    import torch

    image_seconds = text_seconds = 0.0
    for start in range(0, len(pixels), cfg.batch_size):
        batch = pixels[start:start + cfg.batch_size]
        began = time.perf_counter()
        embed.run_tower(loaded.model.encode_image, batch, torch.zeros_like(pixels[0]), loaded, cfg)
        image_seconds += time.perf_counter() - began
        rows = [tokens[i] for i in range(start, min(start + cfg.batch_size, len(tokens)))]
        began = time.perf_counter()
        embed.run_tower(loaded.model.encode_text, rows, torch.zeros_like(tokens[0]), loaded, cfg)
        text_seconds += time.perf_counter() - began
    return image_seconds, text_seconds


def where_time_goes(loaded: models.LoadedModel, table: pa.Table, cfg: embed.EmbedConfig,
                    image_s: float, text_s: float) -> dict[str, float]:
    """Single-thread microseconds per sample of each step (model steps at the run's threads)."""
    from PIL import Image

    transform = embed.pixel_transform(loaded.preprocess)
    steps = list(loaded.preprocess.transforms)
    data, texts = table.column("jpg").to_pylist(), table.column("text").to_pylist()
    n = min(len(data), 512)
    timings = {"decode (PIL open + load)": 0.0, "resize + crop": 0.0, "to tensor + normalise": 0.0}
    for item in data[:n]:
        began = time.perf_counter()
        image = Image.open(io.BytesIO(item))
        image.load()
        decoded = time.perf_counter()
        small = steps[2](steps[1](steps[0](image)))
        resized = time.perf_counter()
        transform(small)  # geometric steps are no-ops on an image already at size
        timings["decode (PIL open + load)"] += decoded - began
        timings["resize + crop"] += resized - decoded
        timings["to tensor + normalise"] += time.perf_counter() - resized
    began = time.perf_counter()
    loaded.tokenizer(texts[:n])
    timings["tokenize"] = time.perf_counter() - began
    features = np.random.default_rng(0).standard_normal((n, loaded.dim)).astype(np.float32)
    began = time.perf_counter()
    embed.result_table({"image": features, "text": features, "image_reason": np.full(n, None, object),
                        "text_reason": np.full(n, None, object)})
    timings["normalise + encode output"] = time.perf_counter() - began
    result = {name: round(1e6 * seconds / n, 1) for name, seconds in timings.items()}
    result["image forward"] = round(1e6 * image_s / len(data), 1)
    result["text forward"] = round(1e6 * text_s / len(data), 1)
    return result


def bench_model(name: str, n: int, rounds: int, cfg: embed.EmbedConfig) -> dict:
    cfg = dataclasses.replace(cfg, model=name)
    table = demo_table(n)
    loaded = models.load_model(name, models.RANDOM, "cpu")
    transform = embed.pixel_transform(loaded.preprocess)
    pixels = [embed.prepare_image(item, transform, cfg)[0] for item in table.column("jpg").to_pylist()]
    tokens = loaded.tokenizer(table.column("text").to_pylist())
    embed.apply(table.slice(0, cfg.batch_size), cfg, None)  # warm-up: threads, allocator
    best_forward, best_embed, image_best, text_best = float("inf"), float("inf"), 0.0, 0.0
    for _ in range(rounds):
        image_s, text_s = forward_only(loaded, pixels, tokens, cfg)
        if image_s + text_s < best_forward:
            best_forward, image_best, text_best = image_s + text_s, image_s, text_s
        began = time.perf_counter()
        embed.apply(table, cfg, None)
        best_embed = min(best_embed, time.perf_counter() - began)
    return {
        "samples": n, "batch_size": cfg.batch_size, "torch_threads": embed.torch_threads(cfg),
        "forward_only": {"images_per_s": round(n / image_best, 1), "texts_per_s": round(n / text_best, 1),
                         "samples_per_s": round(n / best_forward, 1)},
        "embed": {"images_per_s": round(n / best_embed, 1), "texts_per_s": round(n / best_embed, 1)},
        "ratio_embed_to_forward_only": round(best_forward / best_embed, 3),
        "microseconds_per_sample": where_time_goes(loaded, table, cfg, image_best, text_best),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(SAMPLES))
    parser.add_argument("--samples", type=int, default=None, help="default: 2048 (tiny), 192 (ViT-B-32)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--decode-threads", type=int, default=0)
    args = parser.parse_args()
    models.import_torch()
    cfg = embed.EmbedConfig(pretrained="random", batch_size=args.batch_size, threads=args.threads, decode_threads=args.decode_threads)
    report = {name: bench_model(name, args.samples or SAMPLES.get(name, 256), args.rounds, cfg) for name in args.models}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
