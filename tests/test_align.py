"""ALIGN's noisy-text filters (curate.stages.align), including the global shared-caption count."""

from __future__ import annotations

import dataclasses
import random

import pyarrow as pa
import pytest

from curate.contract import make_config
from curate.errors import RecipeError
from curate.kernels.rules import text_keys
from curate.stages.align import STAGE, AlignConfig
from tests.helpers import fit_in_memory

TEN = "a photo of a red dog on the beach"      # appears exactly 10 times: kept
ELEVEN = "a photo of a blue cat on the sofa"   # appears 11 times: dropped


def pool(rows: list[tuple[str | None, int | None, int | None]]) -> pa.Table:
    return pa.table({
        "uid": [f"{i:032x}" for i in range(len(rows))],
        "text": pa.array([r[0] for r in rows], pa.string()),
        "original_width": pa.array([r[1] for r in rows], pa.int64()),
        "original_height": pa.array([r[2] for r in rows], pa.int64()),
    })


def fit(batches: list[pa.Table], cfg: AlignConfig) -> pa.Table:
    """What every engine does: partial per batch, concat, group-by-keys sum, having, finalize."""
    return fit_in_memory(STAGE, cfg, batches)


def run(table: pa.Table, cfg: AlignConfig | None = None, batch_rows: int | None = None) -> pa.Table:
    cfg = cfg or AlignConfig()
    step = batch_rows or max(table.num_rows, 1)
    batches = [table.slice(start, step) for start in range(0, max(table.num_rows, 1), step)]
    artifact = fit(batches, cfg)
    return pa.concat_tables([STAGE.checked_apply(batch, cfg, artifact) for batch in batches])


def shared_pool() -> pa.Table:
    rows = [(TEN, 640, 480)] * 10 + [(ELEVEN, 640, 480)] * 11 + [("A photo of a blue cat on the sofa", 640, 480)]
    return pool(rows)


def test_ten_copies_kept_eleven_dropped_across_two_batches():
    table = shared_pool()
    first, second = table.slice(0, 16), table.slice(16)  # TEN: 10 + 0, ELEVEN: 6 + 5
    cfg = AlignConfig()
    artifact = fit([first, second], cfg)
    assert artifact.to_pylist() == [{"text_key": text_keys([ELEVEN])[0].as_py(), "n_texts": 11}]
    out = pa.concat_tables([STAGE.checked_apply(part, cfg, artifact) for part in (first, second)])
    assert out.column("align_reason").to_pylist() == [None] * 10 + ["shared_text"] * 11 + [None]
    assert out.column("align_keep").to_pylist() == [True] * 10 + [False] * 11 + [True]


def test_split_ten_and_eleven_across_batches():
    rows = [(TEN, 640, 480)] * 6 + [(ELEVEN, 640, 480)] * 5 + [(TEN, 640, 480)] * 4 + [(ELEVEN, 640, 480)] * 6
    out = run(pool(rows), batch_rows=11)  # batch 1: TEN x6, ELEVEN x5; batch 2: TEN x4, ELEVEN x6
    assert out.column("align_reason").to_pylist() == [None] * 6 + ["shared_text"] * 5 + [None] * 4 + ["shared_text"] * 6


def test_result_does_not_depend_on_batching_or_order():
    table = shared_pool()
    whole = run(table)
    for batch_rows in (1, 3, 7, 16):
        assert run(table, batch_rows=batch_rows).equals(whole)
    order = list(range(table.num_rows))
    random.Random(0).shuffle(order)
    shuffled = run(table.take(order), batch_rows=5)
    assert dict(zip(shuffled["uid"].to_pylist(), shuffled["align_reason"].to_pylist())) == \
        dict(zip(whole["uid"].to_pylist(), whole["align_reason"].to_pylist()))


def test_having_and_threshold_from_recipe():
    cfg = make_config(AlignConfig, {"max_images_per_text": 5}, "recipe.align")
    assert STAGE.fit.passes[0].having(cfg) == "n_texts > 5"
    assert STAGE.fit.passes[0].having(AlignConfig()) == "n_texts > 10"
    out = run(pool([(TEN, 640, 480)] * 5 + [(ELEVEN, 640, 480)] * 6), cfg, batch_rows=4)
    assert out.column("align_reason").to_pylist() == [None] * 5 + ["shared_text"] * 6


def test_word_boundaries():
    words = [" ".join(["word"] * n) for n in (2, 3, 20, 21)]
    rows = [(text, 640, 480) for text in [*words, "", "one\u3000two\u3000three", "one\xa0two", "   "]]
    assert run(pool(rows)).column("align_reason").to_pylist() == [
        "few_words", None, None, "many_words", "few_words", None, "few_words", "few_words"]


def test_size_boundaries_and_order():
    rows = [(TEN, w, h) for w, h in [(200, 200), (199, 300), (300, 199), (600, 200), (601, 200), (200, 603),
                                     (0, 300), (None, 300), (300, None), (100, 400)]]
    rows += [(None, 10, 10), ("two words", 10, 10), ("two words", 640, 480)]
    assert run(pool(rows)).column("align_reason").to_pylist() == [
        None, "too_small", "too_small", None, "aspect_ratio", "aspect_ratio",
        "no_size", "no_size", "no_size", "too_small", "no_text", "too_small", "few_words"]


def test_shared_comes_before_word_count_and_after_size():
    rows = [("spam", 640, 480)] * 11 + [("spam", 100, 100)]
    assert run(pool(rows)).column("align_reason").to_pylist() == ["shared_text"] * 11 + ["too_small"]


def test_null_captions_are_not_counted():
    cfg = AlignConfig()
    table = pool([(None, 640, 480)] * 12)
    assert fit([table], cfg).num_rows == 0
    assert run(table).column("align_reason").to_pylist() == ["no_text"] * 12


def test_partial_schema_and_empty_batch():
    cfg = AlignConfig()
    step = STAGE.fit.passes[0]
    counts = STAGE.checked_partial(0, pool([]), cfg, None)
    assert counts.schema == pa.schema([("text_key", pa.int64()), ("n_texts", pa.int64())]) and counts.num_rows == 0
    batch = pool([(TEN, 1, 1), (TEN, 1, 1), (None, 1, 1), ("", 1, 1)])
    counts = STAGE.checked_partial(0, batch, cfg, None).sort_by("n_texts")
    assert counts.column("n_texts").to_pylist() == [1, 2]
    assert STAGE.checked_apply(pool([]), cfg, step.finalize(counts, cfg, None)).num_rows == 0


def test_text_key_is_blake2b_64_little_endian_signed():
    # b2sum -l 64 of "a photo of a dog" is 91a2ad404c5e7eb4; "" is e4a6a0577479b2b4
    assert text_keys(["a photo of a dog", None, ""]).to_pylist() == [
        int.from_bytes(bytes.fromhex("91a2ad404c5e7eb4"), "little", signed=True), None,
        int.from_bytes(bytes.fromhex("e4a6a0577479b2b4"), "little", signed=True)]
    assert text_keys(["a photo of a dog"]).to_pylist() == [-5440807618221333871]
    assert text_keys(["A photo of a dog"]) != text_keys(["a photo of a dog"])


def test_apply_needs_the_fitted_artifact():
    with pytest.raises(RuntimeError, match="fitted"):
        STAGE.checked_apply(pool([(TEN, 640, 480)]), AlignConfig(), None)


def test_config():
    assert dataclasses.asdict(AlignConfig()) == {"min_side": 200, "max_aspect": 3.0, "max_images_per_text": 10,
                                                 "min_words": 3, "max_words": 20}
    with pytest.raises(RecipeError, match="max_images"):
        make_config(AlignConfig, {"max_images": 5}, "recipe.align")
