"""DataComp basic filtering (curate.stages.basic) and the shared word/char/size kernels (curate.kernels.rules).

Expected values are written out by hand from the rule: English by fastText AND
len(text.split()) > 2 AND len(text) > 5 AND min(w, h) >= 200 AND max(w, h) / min(w, h) <= 3.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from curate.contract import make_config
from curate.errors import RecipeError
from curate.kernels.rules import char_lengths, decide, size_checks, word_counts
from curate.stages.basic import STAGE, BasicConfig

ENGLISH = "a photo of a red dog on the beach"


def pool(rows: list[tuple[str | None, int | None, int | None]]) -> pa.Table:
    return pa.table({
        "uid": [f"{i:032x}" for i in range(len(rows))],
        "text": pa.array([r[0] for r in rows], pa.string()),
        "original_width": pa.array([r[1] for r in rows], pa.int64()),
        "original_height": pa.array([r[2] for r in rows], pa.int64()),
    })


def run(rows, cfg: BasicConfig | None = None) -> pa.Table:
    return STAGE.checked_apply(pool(rows), cfg or BasicConfig(), None)


def reasons(rows, cfg: BasicConfig | None = None) -> list[str | None]:
    return run(rows, cfg).column("basic_reason").to_pylist()


# --- kernels -------------------------------------------------------------------------------

def test_word_counts_follow_python_split():
    texts = ["", "   ", "one", "two words", "  padded   out  ", "a\u3000b\xa0c", "a\u200bb", "a\x1cb",
             "tab\tand\nnewline\rcr", "a\x00b", None]
    assert word_counts(texts).tolist() == [0, 0, 1, 2, 2, 3, 1, 2, 4, 1, 0]


def test_char_lengths_are_code_points():
    texts = pa.array(["", "abcde", "abcdef", "é", "e\u0301", "👍👍", "a\x00b", None])
    assert char_lengths(texts).tolist() == [0, 5, 6, 1, 2, 2, 3, 0]


def test_size_checks_boundaries():
    widths = pa.array([200, 199, 200, 600, 602, 200, 0, None, 300, -5, 100, 1_000_000_000], pa.int64())
    heights = pa.array([200, 200, 199, 200, 200, 602, 300, 300, None, 300, 400, 999_999_999], pa.int64())
    keep, reason = decide(size_checks(widths, heights, 200, 3.0), len(widths))
    assert reason.to_pylist() == [None, "too_small", "too_small", None, "aspect_ratio", "aspect_ratio",
                                  "no_size", "no_size", "no_size", "no_size", "too_small", None]
    assert keep.to_pylist() == [r is None for r in reason.to_pylist()]


def test_size_checks_accept_other_numeric_types():
    widths, heights = pa.array([300, 150], pa.int32()), pa.array([300.0, 300.0], pa.float32())
    assert decide(size_checks(widths, heights, 200, 3.0), 2)[1].to_pylist() == [None, "too_small"]


# --- the stage -----------------------------------------------------------------------------

def test_keeps_english_caption_of_a_good_image():
    out = run([(ENGLISH, 640, 480)])
    assert out.column_names == ["uid", "basic_keep", "basic_reason", "basic_lang"]
    assert out.to_pylist() == [{"uid": f"{0:032x}", "basic_keep": True, "basic_reason": None, "basic_lang": "en"}]


def test_size_boundaries():
    rows = [(ENGLISH, w, h) for w, h in [(200, 200), (199, 200), (200, 199), (600, 200), (200, 600), (602, 200),
                                         (200, 602), (0, 300), (300, 0), (None, 300), (300, None), (100, 400)]]
    assert reasons(rows) == [None, "too_small", "too_small", None, None, "aspect_ratio",
                             "aspect_ratio", "no_size", "no_size", "no_size", "no_size", "too_small"]


def test_word_and_char_boundaries():
    rows = [(text, 640, 480) for text in [
        "red dog",          # 2 words -> few_words
        "a red dog",        # 3 words, 9 chars -> kept
        "a b c",            # 3 words, 5 chars -> too_short
        "a b cd",           # 3 words, 6 chars -> kept
        "red\u3000dog\u3000photo",  # ideographic space splits: 3 words
        "red\xa0dog",       # no-break space splits: 2 words
        "",                 # a caption with no words
    ]]
    assert reasons(rows) == ["few_words", None, "too_short", None, None, "few_words", "few_words"]


def test_null_text_and_other_languages():
    rows = [(None, 640, 480),
            ("Ein Foto von einem roten Hund am Strand", 640, 480),
            ("Une photo d'un chien rouge sur la plage", 640, 480),
            ("Una foto de un perro rojo en la playa", 640, 480)]
    out = run(rows)
    assert out.column("basic_reason").to_pylist() == ["no_text", "not_english", "not_english", "not_english"]
    assert out.column("basic_lang").to_pylist() == [None, "de", "fr", "es"]


def test_first_failing_reason_wins():
    rows = [("Ein Foto von einem roten Hund am Strand", 10, 10),  # not English and too small
            ("red dog", 0, 0),                                    # few words and no size
            ("a b c", 100, 900)]                                  # too short, too small, too wide
    assert reasons(rows) == ["not_english", "few_words", "too_short"]


def test_control_characters_and_huge_caption():
    huge = "a photo of a dog " * 58_824  # 1,000,008 characters
    rows = [("a photo of\na red dog", 640, 480), ("a photo\rof a red dog", 640, 480),
            ("a photo of a\x00red dog", 640, 480), (huge, 640, 480), ("\n\n\n\n\n\n", 640, 480)]
    out = run(rows)
    assert out.column("basic_reason").to_pylist() == [None, None, None, None, "few_words"]
    assert out.column("basic_lang").to_pylist()[:4] == ["en", "en", "en", "en"]


def test_result_does_not_depend_on_batching():
    rows = [(ENGLISH, 640, 480), ("red dog", 640, 480), (None, 1, 1), ("a b cd", 150, 300), ("Hund", None, 2)]
    whole = run(rows)
    table = pool(rows)
    parts = [STAGE.checked_apply(table.slice(i, 1), BasicConfig(), None) for i in range(len(rows))]
    assert pa.concat_tables(parts).equals(whole)
    assert STAGE.checked_apply(table.slice(0, 0), BasicConfig(), None).num_rows == 0


def test_config_from_recipe():
    cfg = make_config(BasicConfig, {"min_side": 100, "max_aspect": 4}, "recipe.basic")
    assert cfg == BasicConfig(min_side=100, max_aspect=4.0)
    assert reasons([(ENGLISH, 150, 150), (ENGLISH, 400, 100), (ENGLISH, 401, 100)], cfg) == [None, None, "aspect_ratio"]
    with pytest.raises(RecipeError, match="min_sid"):
        make_config(BasicConfig, {"min_sid": 100}, "recipe.basic")
    with pytest.raises(RecipeError):
        make_config(BasicConfig, {"min_side": "big"}, "recipe.basic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.min_side = 1
    with pytest.raises(TypeError):
        BasicConfig(200)


def test_defaults_are_the_papers():
    assert dataclasses.asdict(BasicConfig()) == {"language": "en", "min_words_exclusive": 2,
                                                 "min_chars_exclusive": 5, "min_side": 200, "max_aspect": 3.0}
    assert STAGE.reads(BasicConfig()) == ("text", "original_width", "original_height")
    assert np.dtype(STAGE.adds.field("basic_keep").type.to_pandas_dtype()) == np.bool_
