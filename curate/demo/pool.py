"""The embedded demo pool: a synthetic image-text URL list with known defects and their truth.

`make_demo_pool` draws simple objects (demo_draw) with templated captions (demo_captions)
and plants the defects each curation step is meant to catch, one per sample, so a run can be
scored against `ground_truth.parquet`:

- caption/image: mismatched captions (CLIP score, DFN), non-English captions (DataComp basic
  filter's fastText `en`, LAION's CLD3), short and boilerplate captions (ALIGN, Jia et al.
  2021: < 3 unigrams, a text shared by > 10 images);
- image: exact and near duplicates (SemDeDup, Abbas et al. 2023), small images and extreme
  aspect ratios (DataComp / ALIGN: shorter side < 200 px, aspect ratio > 3), corrupt bytes;
- download: 404s, refused connections, slow answers (served by demo_server), and rows whose
  published sha256 does not match the served bytes.

Concepts (objects) follow a Zipf law (exponent 1.1): a head-heavy distribution for the
MetaCLIP balancing and concept-frequency reports. Same (n, seed) gives byte-identical files;
every sample draws from its own generator seeded by (seed, row), and the seed is part of every
file key, so pools of different seeds have disjoint uids. The ground truth describes the image
(for a mismatched caption: the object and colour drawn, not the ones the caption names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.demo import captions, draw
from curate.errors import RecipeError
from curate.runio import atomic_write_table
from curate.uid import derive_uid

log = logging.getLogger(__name__)

BASE_PLACEHOLDER = "{base}"
REFUSED_BASE = "http://127.0.0.1:1"  # port 1: nothing listens there, the connection is refused
ZIPF_EXPONENT = 1.1
# defect -> (share of n, minimum count); the minimums keep small pools meaningful
DEFECTS: dict[str, tuple[float, int]] = {
    "mismatched_caption": (0.08, 0),
    "exact_duplicate": (0.03, 0),
    "near_duplicate": (0.05, 0),
    "small_image": (0.03, 0),
    "extreme_aspect": (0.03, 0),
    "non_english": (0.05, 0),
    "short_caption": (0.03, 0),
    "boilerplate_caption": (0.03, 11),  # shared by > 10 images even in a small pool
    "unreachable_url": (0.02, 0),
    "timeout_url": (0.003, 3),
    "corrupt_image": (0.02, 0),
    "hash_mismatch": (0.0, 5),
}
MIN_DEFECT_POOL = 200
# which planted defects each step is meant to remove: written into ground_truth.parquet's metadata
# (curate.reports.truth reads it); SemDeDup is scored on the planted pairs (duplicate_of) instead
TARGETS = {
    "download": ["unreachable_url", "timeout_url", "corrupt_image", "hash_mismatch"],
    "basic": ["small_image", "extreme_aspect", "non_english", "short_caption"],
    "laion2b": ["non_english"],
    "align": ["small_image", "extreme_aspect", "short_caption", "boilerplate_caption"],
    "score": ["mismatched_caption"],
}
_PLAN_STREAM = 1 << 40  # generator key of the pool plan, beyond any row index
URL_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                        ("sha256", pa.string())])
TRUTH_SCHEMA = pa.schema([(name, pa.string()) for name in
                          ("uid", "concept", "colour", "background", "defect", "duplicate_of", "language")])


def defect_counts(n: int, clean_only: bool = False) -> dict[str, int]:
    """How many samples get each defect; the rest ("clean") carry none."""
    if n < 1:
        raise RecipeError(f"a demo pool needs n >= 1 (got {n})")
    if clean_only:
        return {"clean": n}
    if n < MIN_DEFECT_POOL:
        raise RecipeError(f"a demo pool with defects needs n >= {MIN_DEFECT_POOL} (got {n}); use clean_only")
    counts = {name: max(minimum, round(share * n)) for name, (share, minimum) in DEFECTS.items()}
    return {"clean": n - sum(counts.values()), **counts}


def plan_defects(n: int, seed: int, clean_only: bool = False) -> list[str]:
    """One defect label per row, shuffled; row 0 is clean so every duplicate has an earlier original."""
    labels = np.array([name for name, count in defect_counts(n, clean_only).items() for _ in range(count)])
    labels = labels[np.random.default_rng([seed, _PLAN_STREAM]).permutation(n)]
    first_clean = int(np.flatnonzero(labels == "clean")[0])
    labels[[0, first_clean]] = labels[[first_clean, 0]]
    return labels.tolist()


def zipf_shares(k: int, exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    weights = np.arange(1, k + 1, dtype=float) ** -exponent
    return weights / weights.sum()


def plan_concepts(n: int, seed: int) -> list[str]:
    """Objects in exact Zipf proportions (largest remainder), in a seeded random order."""
    names = list(draw.OBJECTS)
    quota = zipf_shares(len(names)) * n
    counts = np.floor(quota).astype(int)
    counts[np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]] += 1
    concepts = np.repeat(names, counts)
    return concepts[np.random.default_rng([seed, _PLAN_STREAM + 1]).permutation(n)].tolist()


def _image_size(rng: np.random.Generator, defect: str) -> tuple[int, int]:
    if defect == "small_image":
        short = int(rng.integers(60, 191))
        size = (short, int(short * rng.uniform(1.0, 1.9)))
    elif defect == "extreme_aspect":
        short = int(rng.integers(200, 241))
        size = (short, int(short * rng.uniform(3.2, 4.3)))
    else:
        return int(rng.integers(224, 401)), int(rng.integers(224, 401))
    return size if rng.random() < 0.5 else size[::-1]


class _PoolBuilder:
    """Builds rows in order, remembering clean rows so duplicates can copy earlier ones."""

    def __init__(self, out_dir: Path, seed: int, boilerplate: int):
        self.out_dir, self.seed = out_dir, seed
        self.book = captions.CaptionBook(limit=3)
        self.short_book = captions.CaptionBook(limit=10)
        self.boilerplate = captions.boilerplate_captions(boilerplate)
        self.clean: dict[str, list[int]] = {}  # concept -> clean row indices so far
        self.scenes: dict[int, draw.Scene] = {}
        self.files: dict[int, Path] = {}
        self.uids: dict[int, str] = {}
        self.captions: dict[int, str] = {}
        self.seen = Counter()
        self.urls: list[dict] = []
        self.truth: list[dict] = []

    def add(self, index: int, defect: str, concept: str) -> None:
        rng = np.random.default_rng([self.seed, index])
        key = f"s{self.seed}-{index:06d}"
        original = self._pick_original(rng, concept) if defect.endswith("_duplicate") else None
        if original is not None:
            scene = self.scenes[original]
            data, ext = self._duplicate_bytes(rng, original, defect)
        else:
            width, height = _image_size(rng, defect)
            scene = draw.random_scene(rng, concept, str(rng.choice(list(draw.COLOURS))), width, height)
            data, ext = self._fresh_bytes(rng, scene, defect)
        caption, language = self._caption(rng, scene, defect, original)
        url = self._url(index, key, ext, defect, data)
        uid = derive_uid(f"demo://{key}", caption)
        self.urls.append({"uid": uid, "url": url, "caption": caption, "sha256": self._sha256(rng, data, key, defect)})
        self.truth.append({"uid": uid, "concept": scene.concept, "colour": scene.colour,
                           "background": scene.background, "defect": defect, "language": language,
                           "duplicate_of": None if original is None else self.uids[original]})
        self.seen[defect] += 1
        if defect == "clean":
            self.clean.setdefault(scene.concept, []).append(index)
            self.scenes[index], self.uids[index], self.captions[index] = scene, uid, caption

    def _pick_original(self, rng: np.random.Generator, concept: str) -> int:
        same = self.clean.get(concept) or [i for rows in self.clean.values() for i in rows]
        return int(same[int(rng.integers(len(same)))])

    def _duplicate_bytes(self, rng: np.random.Generator, original: int, defect: str) -> tuple[bytes, str]:
        data = self.files[original].read_bytes()
        if defect == "exact_duplicate":
            return data, self.files[original].suffix[1:]
        return draw.near_duplicate_bytes(rng, data), "jpg"

    def _fresh_bytes(self, rng: np.random.Generator, scene: draw.Scene, defect: str) -> tuple[bytes | None, str]:
        if defect in ("unreachable_url", "timeout_url"):
            return None, "jpg"  # nothing is ever served for these rows
        use_png = defect == "clean" and scene.background != "noise" and rng.random() < 0.1
        data = draw.encode(draw.render(scene), "PNG" if use_png else "JPEG")
        if defect == "corrupt_image":
            data = draw.corrupt_bytes(rng, data)
        return data, "png" if use_png else "jpg"

    def _caption(self, rng: np.random.Generator, scene: draw.Scene, defect: str,
                 original: int | None) -> tuple[str, str]:
        size, position = draw.size_word(scene), draw.position_phrase(scene)
        if defect == "non_english":
            language = str(rng.choice(captions.LANGUAGES))
            return self.book.pick(rng, captions.foreign_candidates(language, scene.concept, scene.colour)), language
        if defect == "short_caption":
            return self.short_book.pick(rng, captions.short_candidates(scene.concept, scene.colour, size)), "en"
        if defect == "boilerplate_caption":
            return self.boilerplate[self.seen[defect]], "en"
        concept, colour = scene.concept, scene.colour
        if defect == "mismatched_caption":
            concept = str(rng.choice([c for c in draw.OBJECTS if c != scene.concept]))
            colour = str(rng.choice([c for c in draw.COLOURS if c != scene.colour]))
        candidates = captions.english_candidates(concept, colour, scene.background, scene.bg_colour, size, position)
        exclude = () if original is None else (self.captions[original],)
        return self.book.pick(rng, candidates, exclude), "en"

    def _url(self, index: int, key: str, ext: str, defect: str, data: bytes | None) -> str:
        if defect == "timeout_url":
            return f"{BASE_PLACEHOLDER}/slow/{key}.{ext}"
        if defect == "unreachable_url":
            refused = self.seen[defect] % 2 == 1
            return f"{REFUSED_BASE}/images/{key}.{ext}" if refused else f"{BASE_PLACEHOLDER}/missing/{key}.{ext}"
        path = self.out_dir / "images" / f"{key}.{ext}"
        path.write_bytes(data)
        self.files[index] = path
        return f"{BASE_PLACEHOLDER}/images/{key}.{ext}"

    @staticmethod
    def _sha256(rng: np.random.Generator, data: bytes | None, key: str, defect: str) -> str | None:
        if defect == "hash_mismatch":
            return hashlib.sha256(b"not the served bytes of " + key.encode()).hexdigest()
        if data is None or rng.random() >= 0.5:
            return None
        return hashlib.sha256(data).hexdigest()


def make_demo_pool(out_dir: Path, n: int = 3000, seed: int = 0, clean_only: bool = False) -> dict:
    """Write images/, urls.parquet and ground_truth.parquet under `out_dir`; return a summary.

    URLs hold the placeholder `{base}` for the demo server's base URL (see `materialize_urls`),
    except refused connections, which point at port 1 of the loopback address.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    counts = defect_counts(n, clean_only)
    builder = _PoolBuilder(out_dir, seed, counts.get("boilerplate_caption", 0))
    for index, (defect, concept) in enumerate(zip(plan_defects(n, seed, clean_only), plan_concepts(n, seed))):
        builder.add(index, defect, concept)
    urls_path, truth_path = out_dir / "urls.parquet", out_dir / "ground_truth.parquet"
    atomic_write_table(pa.Table.from_pylist(builder.urls, schema=URL_SCHEMA), urls_path)
    truth_schema = TRUTH_SCHEMA.with_metadata({"curate.targets": json.dumps(TARGETS)})
    atomic_write_table(pa.Table.from_pylist(builder.truth, schema=truth_schema), truth_path)
    log.info("demo pool: %d samples (seed %d) in %s, %.1f s", n, seed, out_dir, time.perf_counter() - started)
    return {"n": n, "seed": seed, "out_dir": str(out_dir), "images": str(out_dir / "images"),
            "urls": str(urls_path), "ground_truth": str(truth_path),
            "defects": {name: builder.seen[name] for name in counts}}


def materialize_urls(url_table_path: Path, base_url: str) -> pa.Table:
    """The URL table with `{base}` replaced by the live server's base URL."""
    table = pq.read_table(url_table_path)
    urls = pc.replace_substring(table["url"], BASE_PLACEHOLDER, base_url.rstrip("/"))
    return table.set_column(table.schema.get_field_index("url"), "url", urls)
