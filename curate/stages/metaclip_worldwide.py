"""MetaCLIP 2's worldwide balancing (Chuang et al. 2025, "MetaCLIP 2: A Worldwide Scaling Recipe",
section 3; the reference's curation/curate.py ``t_to_p`` / ``p_to_t``), DESIGN.md 4.7.

Over the language-routed matches of ``metaclip_worldwide_match`` (run first: see ``before``):

- fit, pass ``counts``: per global entry id, the texts matching it over the WHOLE pool (each
  entry belongs to one language, so these are the counts per (language, entry));
- finalize: the tail proportion of English, p = share of English matches on entries with
  count < t_en (t_en = 170,000 in the paper; or ``tail_proportion`` given directly); then per
  language L, t_L = the count at which the ascending cumulative share of L's counts comes nearest
  p (English keeps t_en) and p[L, e] = min(1, t_L / count[L, e]). A language whose t_L would be
  below 1 (the nearest share falls on entries nothing matched; the reference would then drop the
  whole language) gets t_L = 1 and a warning: one text per entry is the least balancing can keep;
- apply: a caption with match set M in language L is kept with 1 - prod over e in M of
  (1 - p[L, e]), from one uniform per sample, uid_uniform(uid, seed, "metaclip_worldwide"), so
  both engines and any partitioning give the same subset.

Columns added: ``metaclip_worldwide_keep``, ``metaclip_worldwide_p`` (the keep probability, for
online resampling) and ``metaclip_worldwide_reason``: null when kept, else ``no_text`` (null
caption), ``no_language`` (no letter to identify), ``no_metadata`` (the caption's language has no
list in the metadata: it is dropped, as every caption the reference cannot route), ``no_match``,
``not_sampled``.

The artifact (OUT/metaclip_worldwide/_artifact.parquet): per entry (entry_id, language, entry,
count, p, t) with t = t_L of its language; the report reads it (curate.reports.languages).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Fit, Pass, Stage, file_field
from curate.errors import RecipeError
from curate.kernels.balancing import entry_counts as matched_entry_counts
from curate.kernels.balancing import (
    keep_probability,
    nearest_count_for_tail,
    sampling_probabilities,
    tail_proportion,
    threshold_for_tail,
)
from curate.kernels.worldwide_match import Languages
from curate.resources import (
    language_metadata_digest,
    load_language_metadata,
    metadata_path,
    missing_metadata,
    resolve_metadata,
)
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

DEFAULT_METADATA = metadata_path("worldwide")
MATCH_STAGE = "metaclip_worldwide_match"
WEAK_TAIL = 0.9  # an English tail proportion above this: t_en is far too large for the pool
COUNT_SCHEMA = pa.schema([("entry_id", pa.int64()), ("n_texts", pa.int64())])
ARTIFACT_SCHEMA = pa.schema([("entry_id", pa.int32()), ("language", pa.string()), ("entry", pa.string()),
                             ("count", pa.int64()), ("p", pa.float64()), ("t", pa.int64())])
ADDS = pa.schema([("metaclip_worldwide_keep", pa.bool_()), ("metaclip_worldwide_reason", pa.string()),
                  ("metaclip_worldwide_p", pa.float64())])


@dataclass(frozen=True, kw_only=True)
class MetaclipWorldwideConfig:
    # Defaults: MetaCLIP 2 (Chuang et al. 2025): t_en = 170,000 at its worldwide scale (MetaCLIP's
    # 20,000 is for a 400M English pool); scale it with the pool, or give tail_proportion instead.
    metadata: str = file_field(DEFAULT_METADATA)  # per-language lists (see metaclip_worldwide_match)
    t_en: int | None = 170000          # English's per-entry cap; sets p, the tail proportion ...
    tail_proportion: float | None = None  # ... or p given directly (t_en: null)
    english: str = "en"                # the language whose tail proportion sets every other t
    seed: int = 0                      # the recipe's seed; uid-hashed sampling

    def __post_init__(self):
        if (self.t_en is None) == (self.tail_proportion is None):
            raise RecipeError("metaclip_worldwide: set exactly one of t_en and tail_proportion (t_en: null to give p)")
        if self.t_en is not None and self.t_en < 1:
            raise RecipeError(f"metaclip_worldwide: t_en must be >= 1, got {self.t_en}")
        if self.tail_proportion is not None and not 0 < self.tail_proportion < 1:
            raise RecipeError(f"metaclip_worldwide: tail_proportion must be in (0, 1), got {self.tail_proportion}")
        if not Path(resolve_metadata(self.metadata)).exists():
            raise RecipeError(missing_metadata(resolve_metadata(self.metadata)))


@functools.lru_cache(maxsize=2)
def _languages(path: str, digest: str) -> Languages:
    return Languages(load_language_metadata(path))


def _lists(cfg: MetaclipWorldwideConfig) -> Languages:
    """The same global id layout as the matching stage's (curate.kernels.worldwide_match.Languages)."""
    resolved = str(Path(resolve_metadata(cfg.metadata)).resolve())
    return _languages(resolved, language_metadata_digest(resolved))


def matching(cfg: MetaclipWorldwideConfig) -> tuple[tuple[str, dict], ...]:
    return ((MATCH_STAGE, {"metadata": cfg.metadata}),)


def entry_counts(table: pa.Table, cfg: MetaclipWorldwideConfig, previous: None = None) -> pa.Table:
    """Pass ``counts``: per global entry id, how many texts of this batch match it."""
    matches = table.column("metaclip_worldwide_entries").combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    ids, counts = matched_entry_counts(matches)
    return pa.table({"entry_id": ids, "n_texts": counts}, schema=COUNT_SCHEMA)


def language_thresholds(counts: dict[str, np.ndarray], cfg: MetaclipWorldwideConfig) -> dict[str, int]:
    """t per language: MetaCLIP 2's t_en -> p -> t_L (see the module docstring)."""
    if cfg.t_en is not None:
        english = counts.get(cfg.english)
        if english is None or not english.sum():
            raise RecipeError(f"metaclip_worldwide: no caption matched the {cfg.english!r} list, so its tail "
                             f"proportion at t_en={cfg.t_en} is undefined; set tail_proportion instead (t_en: null)")
        p = tail_proportion(english, cfg.t_en)
        if p > WEAK_TAIL:
            log.warning("metaclip_worldwide: %.1f%% of the English matches are on entries below t_en=%d, so "
                        "balancing caps almost nothing on this pool; t_en is for MetaCLIP 2's scale: scale it "
                        "with the pool or set tail_proportion (e.g. 0.1)", 100 * p, cfg.t_en)
    else:
        p = cfg.tail_proportion
    thresholds = {}
    for language, language_counts in counts.items():
        if language == cfg.english and cfg.t_en is not None:
            thresholds[language] = cfg.t_en
            continue
        nearest = nearest_count_for_tail(language_counts, p)
        if nearest < 1:
            log.warning("metaclip_worldwide: %s: t would be %d (< 1) for tail proportion %.4f; using t = 1",
                        language, nearest, p)
        thresholds[language] = threshold_for_tail(language_counts, p)
    log.info("metaclip_worldwide: tail proportion p = %.4f; t per language: %s", p,
             ", ".join(f"{language} {t}" for language, t in thresholds.items() if counts[language].sum()))
    return thresholds


def balance(merged: pa.Table, cfg: MetaclipWorldwideConfig, previous: None = None) -> pa.Table:
    """Finalize: per entry its language, pool-wide count, the language's t and p, in id order."""
    lists = _lists(cfg)
    counts = np.zeros(lists.size, dtype=np.int64)
    counts[merged.column("entry_id").to_numpy()] = merged.column("n_texts").to_numpy()
    per_language = {language: counts[lists.offsets[language]:lists.offsets[language] + len(entries)]
                    for language, entries in lists.entries.items()}
    thresholds = language_thresholds(per_language, cfg)
    t = np.concatenate([np.full(len(lists.entries[language]), thresholds[language], np.int64)
                        for language in lists.languages]) if lists.size else np.zeros(0, np.int64)
    language = np.repeat(np.array(lists.languages, dtype=object), [len(lists.entries[x]) for x in lists.languages])
    entries = [entry for language_entries in lists.entries.values() for entry in language_entries]
    return pa.table({"entry_id": np.arange(lists.size, dtype=np.int32), "language": pa.array(language, pa.string()),
                     "entry": pa.array(entries, pa.string()), "count": counts,
                     "p": sampling_probabilities(counts, t), "t": t}, schema=ARTIFACT_SCHEMA)


def apply(table: pa.Table, cfg: MetaclipWorldwideConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("metaclip_worldwide: the entry counts were not fitted; run the stage through an engine")
    matches = table.column("metaclip_worldwide_entries").combine_chunks()
    if not isinstance(matches, pa.ListArray):  # an empty chunked column combines to its type's empty array
        matches = pa.array([], pa.list_(pa.int32()))
    probability = keep_probability(matches, artifact.column("p").to_numpy())
    keep = uid_uniform(table.column("uid"), cfg.seed, "metaclip_worldwide") < probability
    language = table.column("metaclip_worldwide_lang").combine_chunks()
    listed = pa.array(_lists(cfg).languages, pa.string())
    no_text = np.asarray(pc.is_null(matches).to_numpy(zero_copy_only=False), dtype=bool)
    no_language = np.asarray(pc.is_null(language).to_numpy(zero_copy_only=False), dtype=bool)
    no_metadata = ~np.asarray(pc.fill_null(pc.is_in(language, listed), True).to_numpy(zero_copy_only=False), bool)
    no_match = np.diff(matches.offsets.to_numpy()) == 0
    reason = np.select([no_text, no_language, no_metadata, no_match, ~keep],
                       ["no_text", "no_language", "no_metadata", "no_match", "not_sampled"], None)
    return pa.table({"metaclip_worldwide_keep": pa.array(keep, pa.bool_()),
                     "metaclip_worldwide_reason": pa.array(reason.tolist(), pa.string()),
                     "metaclip_worldwide_p": probability})


def describe(cfg: MetaclipWorldwideConfig) -> dict:
    return {"metadata_sha256": language_metadata_digest(resolve_metadata(cfg.metadata))}


def check_inputs(cfg: MetaclipWorldwideConfig, manifests: dict[str, dict]) -> None:
    recorded = (manifests.get(MATCH_STAGE) or {}).get("metadata_sha256")
    if recorded != describe(cfg)["metadata_sha256"]:
        raise RecipeError(f"metaclip_worldwide: the {MATCH_STAGE} stage matched other metadata than "
                          f"metaclip_worldwide.metadata={cfg.metadata!r}; give both the same (a recipe's "
                          f"metaclip_worldwide entry sets both)")


def reads(cfg: MetaclipWorldwideConfig) -> tuple[str, ...]:
    return ("uid", "metaclip_worldwide_lang", "metaclip_worldwide_entries")


STAGE = Stage(
    name="metaclip_worldwide",
    config=MetaclipWorldwideConfig,
    reads=reads,
    adds=ADDS,
    apply=apply,
    fit=Fit(passes=(Pass("counts", COUNT_SCHEMA, ("entry_id",), entry_counts, balance),)),
    summary="MetaCLIP 2: count per (language, entry) over the pool, balance each language to its own t",
    check_inputs=check_inputs,
    describe=describe,
    before=matching,
)
