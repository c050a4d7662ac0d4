"""The text-based and image-based stages piece by piece: WordNet lookup, fastText token counts,
nearest centroids, bad input."""

import numpy as np
import pyarrow as pa
import pytest

from curate.errors import RecipeError
from curate.kernels import kmeans
from curate.kernels.embeddings import encode
from curate.stages.image_based import ImageBasedConfig, fasttext_token_counts, fit_clusters, training_sample
from curate.stages.image_based import apply as image_apply
from curate.stages.text_based import DEFAULT_TABLE, TextBasedConfig, load_table, matching_synset
from curate.stages.text_based import apply as text_apply


@pytest.fixture(scope="module")
def wordnet():
    return load_table(DEFAULT_TABLE)


def test_first_synset_follows_nltk_synsets(wordnet):
    lookup, entities = wordnet
    assert lookup.first_synset("dog") == ("n", 2084071)          # dog.n.01, ImageNet-21k n02084071
    assert lookup.first_synset("Dogs") == ("n", 2084071)         # lower-cased, then "s" detached
    assert lookup.first_synset("geese") == ("n", 1855672)        # noun.exc: geese -> goose
    assert lookup.first_synset("dog,") is None                   # punctuation is kept, so no lemma
    assert lookup.first_synset("the") is None
    assert lookup.first_synset("is") == ("v", 2604760)           # no noun "is": the verb be
    assert lookup.first_synset("dog" + "s" * 300) is None        # too long to look up (documented)
    assert 2084071 in entities and len(entities) == 21843


def test_caption_matches_on_the_first_entity_token(wordnet):
    lookup, entities = wordnet
    assert matching_synset("a photo of two Dogs", lookup, entities) == "n02084071"
    assert matching_synset("a photo of", lookup, entities) is None    # photo.n.01 is not an ImageNet-21k class
    # DataComp compares bare offsets: install's first synset is a verb whose offset is an
    # ImageNet-21k noun offset, so it matches like any noun would
    assert matching_synset("install it", lookup, entities) == "v01569566" and 1569566 in entities


def test_text_based_columns():
    table = pa.table({"text": ["a red dog on the beach", "ein Hund am Strand", "of the and", None]})
    out = text_apply(table, TextBasedConfig(), None)
    assert out.column("text_based_keep").to_pylist() == [True, False, False, False]
    assert out.column("text_based_reason").to_pylist() == [None, "not_english", "no_in21k_synset", "no_text"]
    assert out.column("text_based_synset").to_pylist()[0] == "n02084071"


def test_fasttext_token_counts():
    # fastText splits on space, tab, VT, FF, CR, NUL and newline; each newline adds "</s>"
    texts = ["a\nb", "dog\n", "\n\n", "a \t b", "", " x ", "a\x00b", "a\u3000b", "one", None]
    assert fasttext_token_counts(texts).tolist() == [3, 2, 2, 2, 0, 1, 2, 1, 1, 0]


def test_assign_to_raw_centroids_breaks_ties_low_and_ignores_batching():
    """image_based assigns to L2 k-means centroids (not unit rows) with the same kernel as cluster."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(50, 64)).astype(np.float32)
    centroids[7] = centroids[3]  # an exact tie: the lower index wins
    vectors = rng.normal(size=(500, 64)).astype(np.float32)
    vectors[0] = centroids[3]
    whole = kmeans.assign(vectors, centroids)[0]
    exact = (vectors.astype(np.float64) @ centroids.T.astype(np.float64)).argmax(axis=1)
    assert whole[0] == 3 and np.array_equal(whole, exact)
    assert np.array_equal(np.concatenate([kmeans.assign(vectors[i:i + 1], centroids)[0] for i in range(500)]), whole)


def _batch(n: int = 40, dim: int = 8):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    uids = [f"{i:032x}" for i in range(n)]
    texts = ["a photo of a red dog on the beach"] * n
    texts[0], texts[1] = "dog", None
    emb[2, 0], emb[3] = np.nan, 0.0
    return pa.table({"uid": uids, "text": texts, "image_emb": encode(emb)}), emb


def test_image_based_end_to_end_on_one_batch(tmp_path):
    table, emb = _batch()
    np.save(tmp_path / "targets.npy", emb[10:12])
    cfg = ImageBasedConfig(targets=str(tmp_path / "targets.npy"), clusters=4, embeddings="b32")
    sample = training_sample(table, cfg)
    assert sample.num_rows == 36 and "0" * 32 not in sample.column("uid").to_pylist()  # rows 0-3 are not usable
    artifact = fit_clusters(sample, cfg)
    out = image_apply(table, cfg, artifact)
    reasons = out.column("image_based_reason").to_pylist()
    assert reasons[:4] == ["few_tokens", "no_text", "non_finite", "zero_norm"]
    assert out.column("image_based_cluster").null_count == 2 and out.column("image_based_keep").to_pylist()[10]
    assert set(reasons[4:]) <= {None, "not_target_cluster"}


def test_image_based_refuses_bad_targets_and_too_few_points(tmp_path):
    with pytest.raises(RecipeError, match="targets is required"):
        ImageBasedConfig()
    table, emb = _batch()
    np.save(tmp_path / "wide.npy", np.ones((2, 9), np.float32))
    with pytest.raises(RecipeError, match=r"expected \(n >= 1, 8\)"):
        fit_clusters(training_sample(table, ImageBasedConfig(targets=str(tmp_path / "wide.npy"), clusters=4,
                                                             embeddings="b32")),
                     ImageBasedConfig(targets=str(tmp_path / "wide.npy"), clusters=4, embeddings="b32"))
    cfg = ImageBasedConfig(targets=str(tmp_path / "wide.npy"), clusters=100, embeddings="b32")
    with pytest.raises(RecipeError, match="36 training embeddings for 100 clusters"):
        fit_clusters(training_sample(table, cfg), cfg)
