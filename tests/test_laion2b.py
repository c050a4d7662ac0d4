"""The LAION-2B rule (curate.stages.laion2b): CLD3 English AND CLIP B/32 score >= 0.28."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from curate.contract import make_config
from curate.errors import RecipeError
from curate.stages.laion2b import STAGE, Laion2bConfig

ENGLISH = "The quick brown fox jumps over the lazy dog near the river bank"
GERMAN = "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer"
FRENCH = "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière"
SPANISH = "El rápido zorro marrón salta sobre el perro perezoso cerca del río"
F32_028 = np.float32(0.28)
F32_BELOW_028 = np.nextafter(np.float32(0.28), np.float32(0))


def pool(texts, scores=None, score_type=pa.float32(), column="clip_b32_similarity_score") -> pa.Table:
    table = pa.table({"uid": [f"{i:032x}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    if scores is not None:
        table = table.append_column(column, pa.array(scores, score_type))
    return table


def run(table: pa.Table, cfg: Laion2bConfig | None = None) -> pa.Table:
    return STAGE.checked_apply(table, cfg or Laion2bConfig(), None)


def test_language_and_score():
    texts = [ENGLISH, ENGLISH, ENGLISH, ENGLISH, ENGLISH, ENGLISH, GERMAN, FRENCH, SPANISH, None, GERMAN]
    scores = [0.30, 0.27, F32_028, F32_BELOW_028, float("nan"), None, 0.9, 0.9, 0.9, 0.9, None]
    out = run(pool(texts, scores))
    assert out.column_names == ["uid", "laion2b_keep", "laion2b_reason", "laion2b_lang"]
    assert out.column("laion2b_reason").to_pylist() == [
        None, "low_score", None, "low_score", "no_score", "no_score",
        "not_english", "not_english", "not_english", "no_text", "not_english"]
    assert out.column("laion2b_keep").to_pylist() == [True, False, True] + [False] * 8
    assert out.column("laion2b_lang").to_pylist() == ["en"] * 6 + ["de", "fr", "es", None, "de"]


def test_score_compared_in_its_own_float_type():
    # numpy/pandas compare a float32 column with 0.7 in float32: float32(0.7) = 0.69999999 passes
    cfg = Laion2bConfig(min_score=0.7)
    assert run(pool([ENGLISH, ENGLISH], [np.float32(0.7), 0.69], pa.float32()), cfg) \
        .column("laion2b_reason").to_pylist() == [None, "low_score"]
    assert run(pool([ENGLISH, ENGLISH], [0.28, 0.2799999], pa.float64())) \
        .column("laion2b_reason").to_pylist() == [None, "low_score"]


def test_language_only_without_a_score_column():
    cfg = make_config(Laion2bConfig, {"score_column": None}, "recipe.laion2b")
    assert cfg.score_column is None and STAGE.reads(cfg) == ("text",)
    out = run(pool([ENGLISH, GERMAN, None]), cfg)
    assert out.column("laion2b_reason").to_pylist() == [None, "not_english", "no_text"]


def test_other_score_column():
    cfg = make_config(Laion2bConfig, {"score_column": "clip_l14_similarity_score", "min_score": 0.3}, "r")
    table = pool([ENGLISH, ENGLISH], [0.31, 0.29], column="clip_l14_similarity_score")
    assert STAGE.reads(cfg) == ("text", "clip_l14_similarity_score")
    assert run(table, cfg).column("laion2b_keep").to_pylist() == [True, False]


def test_batching_and_empty_batch():
    table = pool([ENGLISH, GERMAN, None, ENGLISH], [0.3, 0.3, 0.3, 0.1])
    whole = run(table)
    assert pa.concat_tables([run(table.slice(i, 1)) for i in range(4)]).equals(whole)
    assert run(table.slice(0, 0)).num_rows == 0


def test_config():
    assert dataclasses.asdict(Laion2bConfig()) == {
        "language": "en", "score_column": "clip_b32_similarity_score", "min_score": 0.28}
    with pytest.raises(RecipeError, match="threshold"):
        make_config(Laion2bConfig, {"threshold": 0.3}, "recipe.laion2b")
