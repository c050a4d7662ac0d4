"""Synthetic pools in DataComp's released format, for tests and benchmarks (DESIGN.md section 2).

`write_datacomp_pool` writes `<name>.parquet` + `<name>.npz` pairs exactly as DataComp
(Gadre et al. 2023) releases its pools: parquet columns uid, url, text, original_width,
original_height (int64), clip_b32_similarity_score, clip_l14_similarity_score (float32, raw
cosine), face_bboxes (list of [x0, y0, x1, y1] in 0..1), sha256; npz arrays b32_img, b32_txt
(n x 512) and l14_img, l14_txt (n x 768), float16, L2-normalised, row-aligned.

The data is random but shaped like the real thing: image embeddings gather around a few
dozen centres (so k-means has something to find), each text embedding leans towards its
image embedding by a per-sample amount, and the clip scores are the dot products of the
stored float16 arrays computed in float32, so a score filter and the npz always agree.
Captions mix English, other languages and short junk; sizes include small and very
elongated images. Everything is vectorised; embeddings are made in fixed-size chunks on a
thread pool, each chunk from its own seeded generator, so the output is a pure function of
the seed. A million rows of metadata take about 2 s; embeddings cost what numpy's float16
conversions cost (about 5 s per million rows per model on 2 cores).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.runio import atomic_path, atomic_write_table

log = logging.getLogger(__name__)

MODEL_DIMS = {"b32": 512, "l14": 768}
CHUNK_ROWS = 2048  # embedding work is done in chunks this size: fixed, so output depends on the seed only
CENTRES = 32

# kind: (share, separator, starters, adjectives, nouns, tails); "" marks a slot left empty
_CAPTIONS = {
    "en": (0.72, " ", "a photo of|an image of|a close-up of|a picture of|the|a|vintage photo of|aerial view of"
                      "|portrait of|an illustration of|stock photo of|watercolor painting of",
           "red|blue|green|small|large|old|modern|wooden|beautiful|happy|dark|bright|white|black|tiny"
           "|colorful|rustic|shiny|empty|busy",
           "dog|cat|house|car|mountain|beach|woman|man|child|bicycle|tree|flower|city street|kitchen"
           "|bridge|boat|guitar|coffee cup|sofa|bird|horse|lake|train|laptop|cake|dress|pair of shoes|garden",
           "on the beach|in the city at night|with a blue sky|on a white background|for sale|in the snow"
           "|at sunset|in a forest|next to a window|on a wooden table|during the summer|in the rain|"),
    "de": (0.06, " ", "ein Foto von|das Bild zeigt|eine Nahaufnahme von", "roten|kleinen|alten|schönen",
           "Hund|Haus|Auto|Berg|Baum|Katze", "am Strand|in der Stadt|im Schnee|"),
    "fr": (0.05, " ", "une photo d'un|l'image montre un|un gros plan d'un", "petit|vieux|beau|grand",
           "chien|chat|maison|bateau|arbre|vélo", "sur la plage|dans la ville|sous la pluie|"),
    "es": (0.05, " ", "una foto de un|la imagen muestra un|un primer plano de un", "pequeño|viejo|bonito|gran",
           "perro|gato|coche|barco|árbol|jardín", "en la playa|en la ciudad|bajo la lluvia|"),
    "zh": (0.04, "", "一张|这是|", "红色的|小|漂亮的|旧", "狗|猫|房子|汽车|山|花", "在海滩上|在城市里|"),
    "short": (0.08, " ", "", "", "image|photo|img|untitled|logo|icon|DSC|banner|thumb|pic|1|jpg|Home|NEW", ""),
}


def write_datacomp_pool(directory: Path, *, shards: int = 2, rows_per_shard: int = 1000, seed: int = 0,
                        models: tuple[str, ...] = ("b32", "l14"), face_fraction: float = 0.1,
                        npz_models: tuple[str, ...] | None = None) -> Path:
    """Write `shards` DataComp-format parquet + npz pairs into `directory`; deterministic in `seed`.
    ``npz_models`` (default: all of ``models``): the models whose embeddings the npz hold; the others
    get only their score column (the target similarity), which saves their disk space (a scale bench)."""
    unknown = set(models) - set(MODEL_DIMS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; known: {sorted(MODEL_DIMS)}")
    npz_models = models if npz_models is None else npz_models
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        rng = np.random.default_rng([seed, index])
        embeddings, scores = {}, {}
        for number, model in enumerate(models, start=1):
            target = _target_similarity(rng, rows_per_shard, model)
            if model in npz_models:
                embeddings[model] = make_embeddings(np.random.SeedSequence([seed, index, number]), rows_per_shard,
                                                    MODEL_DIMS[model], target)
            scores[model] = embeddings[model][2] if model in embeddings else target
        table = make_metadata(rng, rows_per_shard, face_fraction)
        for model, score in scores.items():
            table = table.add_column(table.schema.get_field_index("face_bboxes"),
                                     f"clip_{model}_similarity_score", pa.array(score))
        name = f"{index:08d}"
        _save_npz({f"{model}_{kind}": array for model, triple in embeddings.items()
                   for kind, array in zip(("img", "txt"), triple)}, directory / f"{name}.npz")
        atomic_write_table(table, directory / f"{name}.parquet")
    log.info("wrote %d synthetic DataComp shard(s) of %d rows to %s", shards, rows_per_shard, directory)
    return directory


def make_metadata(rng: np.random.Generator, n: int, face_fraction: float) -> pa.Table:
    uids = random_hex(rng, n, 16)
    width, height = image_sizes(rng, n)
    return pa.table({
        "uid": uids,
        "url": pc.binary_join_element_wise("https://images.example.com/", uids, ".jpg", ""),
        "text": captions(rng, n),
        "original_width": width,
        "original_height": height,
        "face_bboxes": face_bboxes(rng, n, face_fraction),
        "sha256": random_hex(rng, n, 32),
    })


def random_hex(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """n random lower-case hex strings of 2 * nbytes characters."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)
    chars = np.empty((n, 2 * nbytes), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, n * 2 * nbytes + 1, 2 * nbytes, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars)).cast(pa.string())


def captions(rng: np.random.Generator, n: int) -> pa.Array:
    """Captions from word lists: starter, adjective, noun, tail, in the kind's language."""
    kinds = list(_CAPTIONS)
    shares = np.array([_CAPTIONS[k][0] for k in kinds])
    kind = rng.choice(len(kinds), size=n, p=shares / shares.sum())
    slots = [_slot(rng, kind, [_CAPTIONS[k][column].split("|") for k in kinds]) for column in range(2, 6)]
    separator = pa.array([_CAPTIONS[k][1] for k in kinds]).take(pa.array(kind))
    return pc.binary_join_element_wise(*slots, separator, null_handling="skip")


def _slot(rng: np.random.Generator, kind: np.ndarray, words_per_kind: list[list[str]]) -> pa.Array:
    sizes = np.array([len(words) for words in words_per_kind])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    words = pa.array([word or None for words in words_per_kind for word in words], pa.string())
    pick = starts[kind] + (rng.random(len(kind)) * sizes[kind]).astype(np.int64)
    return words.take(pa.array(pick))


def image_sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) int64: mostly 200-1600 px on the short side, ~10% < 200 px, ~5% aspect > 3."""
    short_side = np.where(rng.random(n) < 0.1, rng.integers(16, 200, n), rng.integers(200, 1600, n))
    aspect = np.clip(rng.lognormal(0.2, 0.2, n), 1.0, 2.9)
    aspect = np.where(rng.random(n) < 0.05, rng.uniform(3.05, 8.0, n), aspect)
    long_side = np.round(short_side * aspect).astype(np.int64)
    landscape = rng.random(n) < 0.7
    return np.where(landscape, long_side, short_side), np.where(landscape, short_side, long_side)


def face_bboxes(rng: np.random.Generator, n: int, face_fraction: float) -> pa.Array:
    """list<list<double>>: no box for most rows, 1-3 boxes [x0, y0, x1, y1] in 0..1 for the rest."""
    counts = np.where(rng.random(n) < face_fraction, rng.integers(1, 4, n), 0)
    boxes = int(counts.sum())
    corner = rng.uniform(0.0, 0.8, (boxes, 2))
    size = rng.uniform(0.05, 0.2, (boxes, 2))
    coords = np.concatenate([corner, np.minimum(corner + size, 1.0)], axis=1).reshape(-1)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * boxes + 1, 4, dtype=np.int32)), pa.array(coords))
    outer_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def _target_similarity(rng: np.random.Generator, n: int, model: str) -> np.ndarray:
    base = 0.24 if model == "b32" else 0.22
    return np.clip(rng.normal(base, 0.06, n), -0.05, 0.45).astype(np.float32)


def make_embeddings(seed: np.random.SeedSequence, n: int, dim: int,
                    similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 L2-normalised image and text embeddings, and their float32 dot products.

    dot(image, text) is close to `similarity`; the scores are computed from the float16
    values actually stored. Chunks are filled by a thread pool (numpy releases the GIL),
    each from its own child of `seed`, so the result does not depend on the thread count.
    """
    chunk_seeds = seed.spawn(1 + -(-n // CHUNK_ROWS))
    centres = np.random.default_rng(chunk_seeds[0]).standard_normal((CENTRES, dim), dtype=np.float32)
    _normalise(centres)
    out = (np.empty((n, dim), np.float16), np.empty((n, dim), np.float16), np.empty(n, np.float32))
    scratch = threading.local()

    def fill(chunk: int) -> None:
        rows = slice(chunk * CHUNK_ROWS, min(n, (chunk + 1) * CHUNK_ROWS))
        if not hasattr(scratch, "buffers"):  # per-thread float32 work space, reused across chunks
            scratch.buffers = np.empty((3, CHUNK_ROWS, dim), np.float32)
        _fill_chunk(np.random.default_rng(chunk_seeds[1 + chunk]), centres, similarity[rows],
                    scratch.buffers[:, :rows.stop - rows.start], (out[0][rows], out[1][rows], out[2][rows]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(chunk_seeds) - 1)))
    return out


def _fill_chunk(rng: np.random.Generator, centres: np.ndarray, similarity: np.ndarray, buffers: np.ndarray,
                out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """One chunk, in place: the float16 conversions dominate, so nothing else touches memory twice."""
    img, txt, mix = buffers
    scale = np.float32(np.sqrt(12.0 / img.shape[1]))  # uniform(-1/2, 1/2) noise has norm ~sqrt(dim / 12)
    rng.random(dtype=np.float32, out=img)
    img -= 0.5
    img *= scale
    img += 0.8 * centres[rng.integers(0, CENTRES, len(img))]
    _normalise(img)
    lean = similarity[:, None]
    rng.random(dtype=np.float32, out=txt)
    txt -= 0.5
    txt *= np.sqrt(1 - lean**2) * scale
    txt += np.multiply(img, lean, out=mix)
    _normalise(txt)
    image_emb, text_emb, scores = out
    image_emb[...], text_emb[...] = img, txt
    img[...], txt[...] = image_emb, text_emb
    scores[...] = np.einsum("ij,ij->i", img, txt)


def _normalise(matrix: np.ndarray) -> None:
    matrix /= np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]


def _save_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
