"""Helpers the tests share: tiny generated pools (hand-checkable rows, embeddings with planted
structure, images with planted defects, a small finished run), and running one stage or one fit
in memory. No test file imports another test file; they import this."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate import pipeline
from curate.contract import Stage
from curate.demo.synthetic import write_datacomp_pool
from curate.engines.plan import merge_partials
from curate.kernels.embeddings import encode
from curate.recipe import parse_recipe
from curate.steps.datacomp import import_datacomp
from curate.uid import derive_uid

CAPTIONS = [
    "a photo of a red star on a striped background",
    "the blue circle sits in the corner of the frame",
    "ein roter Stern auf einem gestreiften Hintergrund im Bild",
    "image",
    "Click here to enlarge this photo",
    "two green squares next to each other on the grass",
    "tiny",
    "a small yellow house under a tree in summer",
]

UNIQUE = {0, 1, 5, 7}  # these captions get a number: unique; the others repeat


def make_rows(n: int, offset: int = 0) -> dict[str, list]:
    """Hand-checkable rows: caption i % 8 (numbered when in UNIQUE), sizes cycling i % 6."""
    sizes = [(640, 480), (150, 300), (900, 250), (300, 300), (200, 600), (None, None)]
    rows = {"uid": [], "url": [], "text": [], "original_width": [], "original_height": [], "status": []}
    for i in range(offset, offset + n):
        url = f"http://example.invalid/{i}.jpg"
        text = CAPTIONS[i % len(CAPTIONS)]
        if i % len(CAPTIONS) in UNIQUE:
            text += f" number {i}"
        width, height = sizes[i % len(sizes)]
        rows["uid"].append(derive_uid(url, text))
        rows["url"].append(url)
        rows["text"].append(text)
        rows["original_width"].append(width)
        rows["original_height"].append(height)
        rows["status"].append("success" if width else "failed_to_download")
    return rows


def write_pool(directory: Path, shard_sizes: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    offset = 0
    for index, size in enumerate(shard_sizes):
        table = pa.table(make_rows(size, offset), schema=pa.schema([
            ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
            ("original_width", pa.int64()), ("original_height", pa.int64()), ("status", pa.string())]))
        pq.write_table(table, directory / f"{index:05d}.parquet")
        offset += size
    return directory


def planted_embeddings(n: int, dim: int = 16, centres: int = 4, duplicates: int = 0, seed: int = 0) -> np.ndarray:
    """Unit rows around ``centres`` directions; the last ``duplicates`` rows are near-copies
    (cosine > 0.99) of random earlier rows."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(centres, dim))
    rows = directions[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, dim))
    if duplicates:
        sources = rng.integers(0, n - duplicates, duplicates)
        rows[n - duplicates:] = rows[sources] + 0.01 * rng.normal(size=(duplicates, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_embedding_pool(directory: Path, shard_sizes: list[int], vectors: np.ndarray,
                         valid: np.ndarray | None = None) -> Path:
    """The conftest pool plus a b32 sidecar holding ``vectors`` (float16) as image and text."""
    write_pool(directory, shard_sizes)
    sidecar = directory / "embeddings" / "b32"
    sidecar.mkdir(parents=True)
    offset = 0
    for index, size in enumerate(shard_sizes):
        uids = pq.read_table(directory / f"{index:05d}.parquet", columns=["uid"]).column("uid")
        rows = vectors[offset:offset + size]
        mask = None if valid is None else valid[offset:offset + size]
        emb = encode(rows, mask)
        pq.write_table(pa.table({"uid": uids, "image_emb": emb, "text_emb": emb}), sidecar / f"part-{index:05d}.parquet")
        offset += size
    (sidecar / "_manifest.json").write_text(json.dumps({"model": "test", "dim": vectors.shape[1], "layout": "pool-shards",
                                                        "fingerprint": f"test-{len(vectors)}"}))
    return directory


def config(name: str, **values: Any) -> Any:
    """A stage's config from recipe values, as `curate run` builds it."""
    recipe = parse_recipe({"stages": {name: values}, "select": "true"}, "t")
    return next(cfg for stage, cfg in recipe.stages if stage.name == name)


def run(name: str, pool: Path, out: Path, engine: str = "local", spark=None, workers: int = 1, **values) -> dict:
    """Run stage ``name`` (and the stages it needs first) on a pool; the stage's manifest."""
    recipe = parse_recipe({"stages": {name: values}, "select": "true"}, "t")
    manifest = None
    for stage, cfg in recipe.stages:
        manifest = pipeline.run_stage(stage, cfg, pool, out, engine=engine, workers=workers, spark=spark)
    return manifest


def table(out: Path, stage: str) -> pa.Table:
    """A stage's output, every part, in uid order."""
    return pq.read_table(sorted((out / stage).glob("part-*.parquet"))).sort_by("uid")


def fit_in_memory(stage: Stage, cfg: Any, batches: list[pa.Table]) -> pa.Table:
    """The stage's fit passes over ``batches`` as an engine runs them, in this process."""
    artifact = None
    for number, step in enumerate(stage.fit.passes):
        partials = [stage.checked_partial(number, batch, cfg, artifact) for batch in batches]
        artifact = step.finalize(merge_partials(partials, step, cfg), cfg, artifact)
    return artifact


def apply_in_memory(stage: Stage, cfg: Any, batches: list[pa.Table]) -> pa.Table:
    """Fit on ``batches`` and apply to each; the outputs concatenated."""
    artifact = fit_in_memory(stage, cfg, batches) if stage.fit else None
    return pa.concat_tables([stage.checked_apply(batch, cfg, artifact) for batch in batches])


COLOURS = {"red": (214, 40, 40), "green": (45, 160, 60), "blue": (35, 85, 215), "yellow": (240, 215, 35)}


def png_header(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit PNG of the given size whose pixel data (all ``rows`` of it) inflates to
    width * height / 8 bytes: a decompression bomb at 20,000 x 20,000, 1 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    body = b"".join(compressor.compress(row * 1000) for _ in range((rows or height) // 1000)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def image_bytes(colour: str, seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(40, 120)), int(rng.integers(40, 120))
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
    x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    image.paste(COLOURS[colour], (x, y, x + width // 2, y + height // 2))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def good_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        colour = list(COLOURS)[i % len(COLOURS)]
        text = f"a {colour} square number {i}"
        rows.append({"uid": derive_uid(f"img://{i}", text), "text": text, "status": "success",
                     "jpg": image_bytes(colour, i, "PNG" if i % 3 == 0 else "JPEG")})
    return rows


def bad_rows() -> list[dict]:
    """One row per problem, with the embed_reason it must get."""
    one_pixel = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(one_pixel, "PNG")
    truncated = image_bytes("green", 3)
    cases = [
        ("no_image", None, "a caption without an image"),
        ("decode_error", b"\xff\xd8\xff\xe0 this is not really a jpeg", "garbage bytes"),
        ("decode_error", truncated[: len(truncated) // 2], "a truncated jpeg"),
        ("tiny_image", one_pixel.getvalue(), "a single pixel"),
        ("too_many_pixels", png_header(20_000, 20_000), "a 20000 x 20000 decompression bomb"),
        ("too_many_pixels", png_header(10_000, 6_000, rows=1000), "above max_pixels, below PIL's own limit"),
        ("no_text", image_bytes("blue", 2), None),
        (None, image_bytes("red", 4), "a red square " * 80_000),  # ~1M characters: cut before tokenizing
    ]
    return [{"uid": derive_uid(f"bad://{index}", "x"), "text": text, "status": "success", "jpg": data, "expect": reason}
            for index, (reason, data, text) in enumerate(cases)]


SCHEMA = pa.schema([("uid", pa.string()), ("text", pa.string()), ("status", pa.string()), ("jpg", pa.binary())])


def write_image_pool(directory: Path, shards: list[list[dict]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(shards):
        table = pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in rows], schema=SCHEMA)
        pq.write_table(table, directory / f"{index:05d}.parquet")
    return directory


def embed_config(**values):
    return config("embed", **{"batch_size": 8, "pretrained": "random", **values})


def embed_table(out: Path) -> pa.Table:
    return pq.read_table(sorted((out / "embed").glob("part-*.parquet"))).sort_by("uid")


RECIPE = {
    "seed": 0,
    "stages": {
        "basic": {},
        "laion2b": {},  # the pool's clip_b32_similarity_score >= 0.28
        "align": {},
        "metaclip": {"t": 20},
        "score": {"score_column": "clip_b32_similarity_score", "fraction": 0.5},
        "cluster": {"clusters": 4},
        "semdedup": {"eps": 0.62},
        "dbp": {"keep_fraction": 0.5, "clusters": 3, "neighbours": 2},
    },
    "select": "status = 'success' AND basic_keep AND score_keep AND dbp_keep",
}


def jpeg(index: int) -> bytes:
    """A 160 x 120 JPEG of a colour that depends on the row (the report downscales it)."""
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)).save(buffer, "JPEG")
    return buffer.getvalue()


def add_images(parquet: Path, first_shard: bool) -> None:
    """jpg and status columns; in the first shard row 0 is a failed download, row 1 corrupt bytes."""
    table = pq.read_table(parquet)
    images = [jpeg(i) for i in range(table.num_rows)]
    status = ["success"] * table.num_rows
    if first_shard:
        images[0], status[0], images[1] = None, "failed_to_download", b"not a jpeg"
    table = table.append_column("jpg", pa.array(images, pa.binary())).append_column("status", pa.array(status))
    pq.write_table(table, parquet)


def make_small_run(work: Path, *, images: bool = True, rows_per_shard: int = 150) -> Path:
    """Write the pool under work/pool and the run under work/run; return the run directory."""
    src = write_datacomp_pool(work / "src", shards=2, rows_per_shard=rows_per_shard, seed=11, models=("b32",))
    if images:
        for index, parquet in enumerate(sorted(src.glob("*.parquet"))):
            add_images(parquet, index == 0)
    import_datacomp(src, work / "pool")
    recipe = RECIPE if images else {**RECIPE, "select": RECIPE["select"].replace("status = 'success' AND ", "")}
    recipe = parse_recipe(recipe, "small")
    pipeline.run_recipe(recipe, work / "pool", work / "run", workers=1)
    return work / "run"


GOLDEN_SEED, GOLDEN_SHARDS, GOLDEN_ROWS = 7, 3, 400


def datacomp_pool(directory: Path) -> Path:
    """The golden runs' DataComp-format pool (tests/golden_runs.py)."""
    return write_datacomp_pool(directory, shards=GOLDEN_SHARDS, rows_per_shard=GOLDEN_ROWS, seed=GOLDEN_SEED)


def write_targets(source: Path, path: Path) -> Path:
    """Every 50th l14 image embedding of the first shard: 'target' images the pool really has."""
    with np.load(sorted(source.glob("*.npz"))[0]) as arrays:
        targets = arrays["l14_img"][::50].astype(np.float32)
    np.save(path, targets)
    return path


def run_subset(pool: Path, out: Path, stages: list[str], select: str, engine: str = "local", spark=None) -> dict:
    """The subset step alone, on one worker locally or on the given SparkSession."""
    from curate.engines import open_session
    from curate.steps import subset

    with open_session(engine, workers=1, spark=spark) as session:
        return subset.run_subset(pool, out, stages, select, session)
