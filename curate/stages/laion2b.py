"""The LAION-2B filter (Schuhmann et al. 2022), as DataComp's "LAION-2B filtering" baseline
reproduces it (Gadre et al. 2023, mlfoundations/datacomp ``baselines/apply_filter.py``),
DESIGN.md 4.1: keep iff CLD3 (gcld3) says the caption is English AND the CLIP ViT-B/32
image-text cosine similarity is >= 0.28.

CLD3 runs with DataComp's settings (min_num_bytes=0, max_num_bytes=1000) on
``text.replace("\\n", " ")``; see curate.langid.

The score is read from the column ``score_column`` (default DataComp's
``clip_b32_similarity_score``, raw cosine, float32). ``score_column: null`` applies the
language part alone, for pools without embeddings yet.

Columns added: ``laion2b_keep``; ``laion2b_reason``, null when kept, else the first failing
of no_text (null caption), not_english, no_score (null or NaN score: it never passes),
low_score; ``laion2b_lang``, the CLD3 code of every caption.

Decision on the comparison: the score is compared in its own column type, with the
threshold rounded to that type, as DataComp's numpy/pandas comparison of a float32 column
with 0.28 does. So a float32 score equal to float32(0.28) passes, and the float32 value just
below it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.contract import Stage
from curate.kernels.rules import Check, decide, float_values, is_null
from curate.models.langid import cld3_language


@dataclass(frozen=True, kw_only=True)
class Laion2bConfig:
    # Defaults: the LAION-2B rule (Schuhmann et al. 2022) as DataComp applies it (Gadre et al. 2023).
    language: str = "en"
    score_column: str | None = "clip_b32_similarity_score"
    min_score: float = 0.28


def score_checks(scores: pa.Array | pa.ChunkedArray, min_score: float) -> list[Check]:
    """no_score (null or NaN) and low_score (score < min_score in the column's own float type)."""
    if pa.types.is_floating(scores.type):
        values = scores.to_numpy(zero_copy_only=False)  # nulls become NaN
    else:
        values = float_values(scores, "score")
    missing = is_null(scores) | np.isnan(values)
    threshold = values.dtype.type(min_score)
    return [("no_score", missing), ("low_score", ~missing & ~(values >= threshold))]


def apply(table: pa.Table, cfg: Laion2bConfig, artifact: pa.Table | None) -> pa.Table:
    text = table.column("text")
    languages = cld3_language(text.to_pylist())
    checks = [("no_text", is_null(text)), ("not_english", np.array(languages, dtype=object) != cfg.language)]
    if cfg.score_column is not None:
        checks += score_checks(table.column(cfg.score_column), cfg.min_score)
    keep, reason = decide(checks, table.num_rows)
    return pa.table({"laion2b_keep": keep, "laion2b_reason": reason, "laion2b_lang": pa.array(languages, pa.string())})


def reads(cfg: Laion2bConfig) -> tuple[str, ...]:
    return ("text",) if cfg.score_column is None else ("text", cfg.score_column)


STAGE = Stage(
    name="laion2b",
    config=Laion2bConfig,
    reads=reads,
    adds=pa.schema([("laion2b_keep", pa.bool_()), ("laion2b_reason", pa.string()), ("laion2b_lang", pa.string())]),
    apply=apply,
    summary="LAION-2B rule: CLD3 English and CLIP B/32 score >= 0.28",
)
