"""DataComp "basic" filtering (Gadre et al. 2023, "DataComp: In search of the next generation
of multimodal datasets"; mlfoundations/datacomp ``baselines/apply_filter.py``), DESIGN.md 4.1.

Keep a sample iff the fastText lid.176 top-1 label of ``text.replace("\\n", " ")`` is "en"
(no probability threshold) AND ``len(text.split()) > 2`` AND ``len(text) > 5`` AND
``min(w, h) >= 200`` AND ``max(w, h) / min(w, h) <= 3`` (w, h = original_width, original_height).

Columns added:

- ``basic_keep``: the decision;
- ``basic_reason``: null when kept, else the first failing check in this order:
  no_text (null caption), not_english, few_words, too_short, no_size (null, zero or negative
  side), too_small, aspect_ratio;
- ``basic_lang``: the fastText label, for every sample with a caption (null otherwise), so a
  recipe can select another language without recomputing.

Decisions where the paper's code leaves room: the boundaries are those of the code above
(3 words and 6 characters pass, 2 words and 5 characters fail; a side of exactly 200 and a
ratio of exactly 3.0 pass; the ratio is a float division). The empty caption "" is a caption:
fastText labels it "en" and it fails as few_words. A null caption (DataComp's code would stop
on it) fails as no_text. See curate.models.langid for how newline, CR and NUL reach fastText.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.contract import Stage
from curate.kernels.rules import char_lengths, decide, is_null, size_checks, word_counts
from curate.models.langid import fasttext_top1


@dataclass(frozen=True, kw_only=True)
class BasicConfig:
    # Defaults: DataComp's basic filtering baseline (Gadre et al. 2023).
    language: str = "en"          # fastText top-1 label required
    min_words_exclusive: int = 2  # keep len(text.split()) > 2
    min_chars_exclusive: int = 5  # keep len(text) > 5
    min_side: int = 200           # keep min(w, h) >= 200
    max_aspect: float = 3.0       # keep max(w, h) / min(w, h) <= 3


def apply(table: pa.Table, cfg: BasicConfig, artifact: pa.Table | None) -> pa.Table:
    text = table.column("text")
    texts = text.to_pylist()
    languages = fasttext_top1(texts)
    checks = [
        ("no_text", is_null(text)),
        ("not_english", np.array(languages, dtype=object) != cfg.language),
        ("few_words", word_counts(texts) <= cfg.min_words_exclusive),
        ("too_short", char_lengths(text) <= cfg.min_chars_exclusive),
        *size_checks(table.column("original_width"), table.column("original_height"), cfg.min_side, cfg.max_aspect),
    ]
    keep, reason = decide(checks, table.num_rows)
    return pa.table({"basic_keep": keep, "basic_reason": reason, "basic_lang": pa.array(languages, pa.string())})


def reads(cfg: BasicConfig) -> tuple[str, ...]:
    return ("text", "original_width", "original_height")


STAGE = Stage(
    name="basic",
    config=BasicConfig,
    reads=reads,
    adds=pa.schema([("basic_keep", pa.bool_()), ("basic_reason", pa.string()), ("basic_lang", pa.string())]),
    apply=apply,
    summary="DataComp basic filtering: fastText English, > 2 words, > 5 chars, min side >= 200, aspect <= 3",
)
