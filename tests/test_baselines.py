"""Every DataComp baseline recipe (jobs/recipes/*.yaml, DESIGN.md 4.1) on a generated DataComp-format
pool: OUT/subset.npy equals the uid set computed here independently, in plain numpy/python."""

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.demo.synthetic import write_datacomp_pool
from curate.models.langid import fasttext_model_path
from curate.recipe import load_recipe
from curate.stages.text_based import DEFAULT_TABLE
from curate.steps.datacomp import import_datacomp
from curate.uid import uid_pairs, uid_uniform

CLUSTERS = 12
SAMPLE = 0.8


@pytest.fixture(scope="module")
def datacomp(tmp_path_factory):
    """A pool from `curate import-datacomp`, its rows in one table, the npz arrays, targets."""
    work = tmp_path_factory.mktemp("baselines")
    src = write_datacomp_pool(work / "src", shards=3, rows_per_shard=250, seed=7)
    pool = work / "pool"
    import_datacomp(src, pool)
    rows = pq.read_table(sorted(src.glob("*.parquet")))
    npz = [np.load(path) for path in sorted(src.glob("*.npz"))]
    l14_img = np.concatenate([arrays["l14_img"] for arrays in npz])
    targets = work / "targets.npy"
    np.save(targets, l14_img[[3, 300, 600]].astype(np.float32) + 0.01)  # three target images, nudged
    return {"pool": pool, "rows": rows, "l14_img": l14_img, "targets": targets, "work": work}


def run(datacomp, name: str, engine: str = "local", overrides: tuple[str, ...] = ()) -> Path:
    out = datacomp["work"] / f"{name}-{engine}"
    if "image_based" in name:
        overrides = (*overrides, f"image_based.targets={datacomp['targets']}", f"image_based.clusters={CLUSTERS}",
                     f"image_based.sample_fraction={SAMPLE}")
    recipe = load_recipe(f"jobs/recipes/{name}.yaml", list(overrides))
    pipeline.run_recipe(recipe, datacomp["pool"], out, engine=engine, workers=1,
                        master="local[2]" if engine == "spark" else None)
    return out


def assert_subset(out: Path, uids: list[str]) -> None:
    subset = np.load(out / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8")
    expected = np.sort(uid_pairs(uids), order=["f0", "f1"])
    assert len(subset) == len(expected) and np.array_equal(subset, expected)


# --- the rules of DESIGN.md 4.1, written out plainly ------------------------------------------

def fasttext_english(texts: list[str]) -> np.ndarray:
    import fasttext

    model = fasttext.load_model(str(fasttext_model_path()))
    return np.array([model.predict(t.replace("\n", " "), k=1)[0][0] == "__label__en" for t in texts])


def clip_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    threshold = -np.sort(-scores)[int(len(scores) * fraction)]
    return scores >= threshold


class NltkFirstSynset:
    """nltk 3.8.1's ``wordnet.synsets(word)[0].offset()`` read straight from the table, rule by rule."""

    RULES = {"n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                   ("shes", "sh"), ("men", "man"), ("ies", "y")],
             "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
                   ("ing", "")],
             "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")], "r": []}

    def __init__(self):
        with gzip.open(DEFAULT_TABLE, "rt") as handle:
            table = json.load(handle)
        self.index, self.exc = table["first_synsets"], table["exceptions"]
        self.entities = {int(wnid[1:]) for wnid in table["imagenet21k"]}

    def morphy(self, form, pos):
        def rules(forms):
            return [f[:-len(old)] + new for f in forms for old, new in self.RULES[pos] if f.endswith(old)]

        def known(forms):
            return [f for f in forms if f in self.index[pos]]

        if form in self.exc[pos]:
            return known([form] + self.exc[pos][form])
        forms = rules([form])
        found = known([form] + forms)
        while not found and forms:
            forms = rules(forms)
            found = known(forms)
        return found

    def offset(self, word):
        word = word.lower()
        for pos in "nvar":
            forms = self.morphy(word, pos)
            if forms:
                return self.index[pos][forms[0]]
        return None

    def in21k(self, text):
        return any(self.offset(word) in self.entities for word in text.split())


def image_based_keep(datacomp, artifact_dir: Path) -> np.ndarray:
    import faiss

    rows, l14 = datacomp["rows"], datacomp["l14_img"].astype(np.float32)
    texts = rows.column("text").to_pylist()
    tokens = np.array([len(re.findall("[^ \t\v\f\r\n\x00]+", t)) + t.count("\n") for t in texts])
    caption = fasttext_english(texts) & (tokens > 1) & (np.array([len(t) for t in texts]) > 5)
    uids = np.array(rows.column("uid").to_pylist())
    sample = caption & (uid_uniform(rows.column("uid"), 0, "image_based") < SAMPLE)
    order = np.argsort(uids[sample], kind="stable")
    clustering = faiss.Clustering(l14.shape[1], CLUSTERS)
    clustering.niter, clustering.seed, clustering.max_points_per_centroid = 20, 0, 10_000_000
    clustering.train(np.ascontiguousarray(l14[sample][order]), faiss.IndexFlatL2(l14.shape[1]))
    centroids = faiss.vector_float_to_array(clustering.centroids).reshape(CLUSTERS, -1)
    artifact = pq.read_table(artifact_dir / "_artifact.parquet")
    assert np.array_equal(np.stack(artifact.column("centroid").to_numpy(zero_copy_only=False)), centroids)
    nearest = (l14.astype(np.float64) @ centroids.T.astype(np.float64)).argmax(axis=1)
    targets = np.load(datacomp["targets"]).astype(np.float64)
    target_clusters = set((targets @ centroids.T.astype(np.float64)).argmax(axis=1).tolist())
    return caption & np.isin(nearest, list(target_clusters))


# --- the recipes ----------------------------------------------------------------------------

def test_no_filter(datacomp):
    assert_subset(run(datacomp, "no_filter"), datacomp["rows"].column("uid").to_pylist())


def test_basic(datacomp):
    rows = datacomp["rows"]
    texts = rows.column("text").to_pylist()
    w, h = (rows.column(c).to_numpy().astype(float) for c in ("original_width", "original_height"))
    keep = (fasttext_english(texts) & (np.array([len(t.split()) for t in texts]) > 2)
            & (np.array([len(t) for t in texts]) > 5)
            & (np.minimum(w, h) >= 200) & (np.maximum(w, h) / np.minimum(w, h) <= 3))
    assert 0 < keep.sum() < len(keep)
    assert_subset(run(datacomp, "basic"), np.array(rows.column("uid").to_pylist())[keep].tolist())


def test_clip_score_l14_30pct(datacomp):
    rows = datacomp["rows"]
    keep = clip_fraction(rows.column("clip_l14_similarity_score").to_numpy(), 0.3)
    assert keep.sum() >= int(0.3 * rows.num_rows) + 1
    assert_subset(run(datacomp, "clip_score_l14_30pct"), np.array(rows.column("uid").to_pylist())[keep].tolist())


def test_clip_score_b32_threshold(datacomp):
    rows = datacomp["rows"]
    keep = rows.column("clip_b32_similarity_score").to_numpy() >= np.float32(0.25)
    uids = np.array(rows.column("uid").to_pylist())
    assert_subset(run(datacomp, "clip_score_b32_threshold_0.25"), uids[keep].tolist())


def test_laion2b(datacomp):
    import gcld3

    rows = datacomp["rows"]
    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    english = np.array([detector.FindLanguage(text=t.replace("\n", " ")).language == "en"
                        for t in rows.column("text").to_pylist()])
    keep = english & (rows.column("clip_b32_similarity_score").to_numpy() >= np.float32(0.28))
    assert_subset(run(datacomp, "laion2b"), np.array(rows.column("uid").to_pylist())[keep].tolist())


def test_text_based(datacomp):
    rows = datacomp["rows"]
    texts = rows.column("text").to_pylist()
    lookup = NltkFirstSynset()
    keep = fasttext_english(texts) & np.array([lookup.in21k(t) for t in texts])
    assert 0 < keep.sum() < len(keep)
    out = run(datacomp, "text_based")
    assert_subset(out, np.array(rows.column("uid").to_pylist())[keep].tolist())
    part = pq.read_table(out / "text_based" / "part-00000.parquet")
    assert set(part.column("text_based_reason").to_pylist()) <= {None, "not_english", "no_in21k_synset"}


def test_image_based(datacomp):
    out = run(datacomp, "image_based")
    keep = image_based_keep(datacomp, out / "image_based")
    assert 0 < keep.sum() < len(keep)
    assert_subset(out, np.array(datacomp["rows"].column("uid").to_pylist())[keep].tolist())


def test_image_based_intersect_clip_score(datacomp):
    out = run(datacomp, "image_based_intersect_clip_score")
    rows = datacomp["rows"]
    keep = image_based_keep(datacomp, out / "image_based") & clip_fraction(
        rows.column("clip_l14_similarity_score").to_numpy(), 0.3)
    assert 0 < keep.sum()
    assert_subset(out, np.array(rows.column("uid").to_pylist())[keep].tolist())


@pytest.mark.spark
@pytest.mark.parametrize("name", ["clip_score_l14_30pct", "image_based_intersect_clip_score"])
def test_spark_subset_equals_local(datacomp, name, spark):
    local, on_spark = run(datacomp, name), run(datacomp, name, engine="spark")
    assert (on_spark / "subset.npy").read_bytes() == (local / "subset.npy").read_bytes()
    for stage in ("score", "image_based") if "image_based" in name else ("score",):
        tables = [pq.read_table(sorted((out / stage).glob("part-*.parquet"))).sort_by("uid")
                  for out in (local, on_spark)]
        assert tables[1].equals(tables[0]), stage
