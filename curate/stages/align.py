"""ALIGN's noisy-text filters (Jia et al. 2021, "Scaling Up Visual and Vision-Language
Representation Learning With Noisy Text Supervision", section 3), DESIGN.md 4.6.

Drop images whose shorter side is < 200 px or whose aspect ratio is > 3; drop alt-texts
shared by more than 10 images; drop texts with fewer than 3 or more than 20 unigrams.

The sharing rule is a global statistic, fitted over the WHOLE pool before any batch is
decided: each batch counts its captions by a 64-bit text key (curate.rules.text_keys), the
engine sums the counts per key and keeps keys with ``n_texts > 10`` (the ``having``
predicate); that small table of over-shared keys is the artifact ``apply`` looks keys up in.
So the result does not depend on how rows are split into batches or partitions.

Columns added: ``align_keep``; ``align_reason``, null when kept, else the first failing of
no_text, no_size, too_small, aspect_ratio, shared_text, few_words, many_words.

Decisions where the paper leaves room:
- "shared by more than 10 images" counts rows with byte-identical captions (case and
  whitespace kept; the paper names no normalisation): 10 copies are kept, 11 are all dropped.
  Two different captions sharing a 64-bit key would be counted together (at 10^9 distinct
  captions the chance of any collision is about 3%; it can only drop, never keep, a caption).
- unigrams are ``len(text.split())``; 3 and 20 pass, 2 and 21 fail.
- the size rule and its boundaries are those of curate.kernels.rules (200 and exactly 3.0 pass;
  a null, zero or negative side is no_size).
- a null caption is no_text and is not counted; the empty caption "" is counted like any
  other and fails as few_words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Fit, Pass, Stage
from curate.kernels.rules import decide, is_null, size_checks, text_keys, word_counts

COUNT_SCHEMA = pa.schema([("text_key", pa.int64()), ("n_texts", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    # Defaults: ALIGN (Jia et al. 2021), section 3.
    min_side: int = 200             # drop if the shorter side < 200 px
    max_aspect: float = 3.0         # drop if the aspect ratio > 3
    max_images_per_text: int = 10   # drop alt-texts shared by more than 10 images
    min_words: int = 3              # drop texts with fewer than 3 unigrams
    max_words: int = 20             # drop texts with more than 20 unigrams


def text_counts(table: pa.Table, cfg: AlignConfig, previous: pa.Table | None = None) -> pa.Table:
    """Partial: rows per caption key in this batch (null captions are not counted)."""
    keys = pa.table({"text_key": text_keys(table.column("text").to_pylist())})
    keys = keys.filter(pc.is_valid(keys.column("text_key")))
    counts = keys.group_by("text_key").aggregate([("text_key", "count")])
    return pa.table({"text_key": counts.column("text_key"), "n_texts": counts.column("text_key_count")},
                    schema=COUNT_SCHEMA)


def having(cfg: AlignConfig) -> str:
    return f"n_texts > {int(cfg.max_images_per_text)}"


def shared_texts(merged: pa.Table, cfg: AlignConfig, previous: pa.Table | None = None) -> pa.Table:
    """Finalize: the keys of captions over the limit, with their pool-wide counts."""
    over = merged.filter(pc.greater(merged.column("n_texts"), cfg.max_images_per_text))
    return over.select(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)


def apply(table: pa.Table, cfg: AlignConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("align: the shared-caption counts were not fitted; run the stage through an engine")
    text = table.column("text")
    texts = text.to_pylist()
    words = word_counts(texts)
    shared = pc.fill_null(pc.is_in(text_keys(texts), value_set=artifact.column("text_key").combine_chunks()), False)
    checks = [
        ("no_text", is_null(text)),
        *size_checks(table.column("original_width"), table.column("original_height"), cfg.min_side, cfg.max_aspect),
        ("shared_text", np.asarray(shared.to_numpy(zero_copy_only=False), dtype=bool)),
        ("few_words", words < cfg.min_words),
        ("many_words", words > cfg.max_words),
    ]
    keep, reason = decide(checks, table.num_rows)
    return pa.table({"align_keep": keep, "align_reason": reason})


def reads(cfg: AlignConfig) -> tuple[str, ...]:
    return ("text", "original_width", "original_height")


STAGE = Stage(
    name="align",
    config=AlignConfig,
    reads=reads,
    adds=pa.schema([("align_keep", pa.bool_()), ("align_reason", pa.string())]),
    apply=apply,
    fit=Fit(passes=(Pass("caption_counts", COUNT_SCHEMA, ("text_key",), text_counts, shared_texts, having),)),
    summary="ALIGN noisy-text filters: min side >= 200, aspect <= 3, alt-text on <= 10 images, 3..20 unigrams",
)
