"""MetaCLIP balancing (Xu et al. 2023, "Demystifying CLIP Data", section 3.3), DESIGN.md 4.2.

Over the matches of the ``metaclip_match`` stage (which a recipe's ``metaclip`` runs first: see
``before``), count per entry over the WHOLE pool, then balance: an entry matched by count[e] texts
gets p[e] = min(1, t / count[e]), and a text with match set M is kept with probability
1 - prod over e in M of (1 - p[e]); texts with no match are dropped.

- fit, pass ``counts``: partial = (entry_id, n_texts) per batch, summed by the engine over the
  pool; finalize = the artifact: one row per entry (entry_id, entry, count, p, t), len(metadata)
  rows. ``t`` is the config's, or with ``tail_proportion`` p the one MetaCLIP 2 derives for a
  language (Chuang et al. 2025, DESIGN.md 4.7) applied to this pool: the count at which the
  ascending cumulative share of the counts comes nearest p (curate.kernels.balancing), so t
  scales with the pool as the paper scales it (20,000 at 400M, 170,000 at 2.5B);
- apply: one uniform per sample from uid_uniform(uid, seed, "metaclip"), so the subset is the
  same on both engines and any partitioning, and ``seed`` (the recipe's) changes it.

Columns added: ``metaclip_keep``, ``metaclip_reason`` (null when kept, else no_text for a null
caption, no_match, or not_sampled) and ``metaclip_p`` (the keep probability, for loaders that
resample per epoch: MetaCLIP's online curation). ``metaclip_entries`` comes from metaclip_match.

The matches must come from the same metadata: ``check_inputs`` compares the digest the matching
stage recorded with this stage's list, so a list edited in place cannot be balanced against stale
matches. Each caption is matched once, on both engines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Fit, Pass, Stage, file_field
from curate.errors import RecipeError
from curate.fingerprint import file_sha256
from curate.kernels.balancing import entry_counts as matched_entry_counts
from curate.kernels.balancing import keep_probability, sampling_probabilities, tail_proportion, threshold_for_tail
from curate.resources import load_metadata, metadata_path, missing_metadata, resolve_metadata
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

DEFAULT_METADATA = metadata_path("entries.json.gz")
MATCH_STAGE = "metaclip_match"
COUNT_SCHEMA = pa.schema([("entry_id", pa.int64()), ("n_texts", pa.int64())])
ARTIFACT_SCHEMA = pa.schema([("entry_id", pa.int32()), ("entry", pa.string()), ("count", pa.int64()),
                             ("p", pa.float64())])
ADDS = pa.schema([("metaclip_keep", pa.bool_()), ("metaclip_reason", pa.string()), ("metaclip_p", pa.float64())])


@dataclass(frozen=True, kw_only=True)
class MetaclipConfig:
    # Defaults: MetaCLIP (Xu et al. 2023): t = 20,000 for a 400M pool (170,000 for 2.5B).
    metadata: str = file_field(DEFAULT_METADATA)  # the entry list the matching stage uses (see metaclip_match)
    t: int | None = 20000             # per-entry cap: p[e] = min(1, t / count[e]) ...
    tail_proportion: float | None = None  # ... or t from this pool: the share of matches on entries
    #                                       below t is this (MetaCLIP 2's p -> t; t: null)
    seed: int = 0                     # the recipe's seed; uid-hashed sampling

    def __post_init__(self):
        if (self.t is None) == (self.tail_proportion is None):
            raise RecipeError("metaclip: set exactly one of t and tail_proportion (t: null to derive t from the pool)")
        if self.t is not None and self.t < 1:
            raise RecipeError(f"metaclip: t must be >= 1, got {self.t}")
        if self.tail_proportion is not None and not 0 < self.tail_proportion < 1:
            raise RecipeError(f"metaclip: tail_proportion must be in (0, 1), got {self.tail_proportion}")
        if not Path(resolve_metadata(self.metadata)).is_file():
            raise RecipeError(missing_metadata(resolve_metadata(self.metadata)))


def matching(cfg: MetaclipConfig) -> tuple[tuple[str, dict], ...]:
    """The stage a recipe runs before this one: the matching, with the same metadata."""
    return ((MATCH_STAGE, {"metadata": cfg.metadata}),)


def entry_counts(table: pa.Table, cfg: MetaclipConfig, previous: None = None) -> pa.Table:
    """Pass ``counts``: per entry id, how many texts of this batch match it."""
    matches = table.column("metaclip_entries").combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    ids, counts = matched_entry_counts(matches)
    return pa.table({"entry_id": ids, "n_texts": counts}, schema=COUNT_SCHEMA)


def balance(merged: pa.Table, cfg: MetaclipConfig, previous: None = None) -> pa.Table:
    """Finalize: the pool-wide count and p of every entry, in id order."""
    entries = load_metadata(resolve_metadata(cfg.metadata))
    counts = np.zeros(len(entries), dtype=np.int64)
    counts[merged.column("entry_id").to_numpy()] = merged.column("n_texts").to_numpy()
    t = cfg.t if cfg.t is not None else threshold_for_tail(counts, cfg.tail_proportion)
    log.info("metaclip: t = %d (%s); tail proportion %.3f", t, "given" if cfg.t is not None else
             f"for tail_proportion {cfg.tail_proportion}", tail_proportion(counts, t))
    table = pa.table({"entry_id": np.arange(len(entries), dtype=np.int32), "entry": pa.array(entries, pa.string()),
                      "count": counts, "p": sampling_probabilities(counts, t)}, schema=ARTIFACT_SCHEMA)
    return table.append_column("t", pa.array(np.full(len(entries), t), pa.int64()))


def apply(table: pa.Table, cfg: MetaclipConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("metaclip: the entry counts were not fitted; run the stage through an engine")
    matches = table.column("metaclip_entries").combine_chunks()
    if not isinstance(matches, pa.ListArray):  # an empty chunked column combines to its type's empty array
        matches = pa.array([], pa.list_(pa.int32()))
    probability = keep_probability(matches, artifact.column("p").to_numpy())
    keep = uid_uniform(table.column("uid"), cfg.seed, "metaclip") < probability
    no_text = np.asarray(pc.is_null(matches).to_numpy(zero_copy_only=False), dtype=bool)  # a null caption
    no_match = np.diff(matches.offsets.to_numpy()) == 0
    reason = np.where(no_text, "no_text", np.where(no_match, "no_match", np.where(keep, None, "not_sampled")))
    return pa.table({"metaclip_keep": pa.array(keep, pa.bool_()),
                     "metaclip_reason": pa.array(reason.tolist(), pa.string()), "metaclip_p": probability})


def describe(cfg: MetaclipConfig) -> dict:
    """The metadata file's content hash: editing the list in place re-runs the stage."""
    return {"metadata_sha256": file_sha256(resolve_metadata(cfg.metadata))}


def check_inputs(cfg: MetaclipConfig, manifests: dict[str, dict]) -> None:
    recorded = (manifests.get(MATCH_STAGE) or {}).get("metadata_sha256")
    if recorded != file_sha256(resolve_metadata(cfg.metadata)):
        raise RecipeError(f"metaclip: the {MATCH_STAGE} stage matched another metadata list than "
                          f"metaclip.metadata={cfg.metadata!r}; give both the same list (a recipe's metaclip "
                          f"entry sets both)")


def reads(cfg: MetaclipConfig) -> tuple[str, ...]:
    return ("uid", "metaclip_entries")  # null entries: a null caption


STAGE = Stage(
    name="metaclip",
    config=MetaclipConfig,
    reads=reads,
    adds=ADDS,
    apply=apply,
    fit=Fit(passes=(Pass("counts", COUNT_SCHEMA, ("entry_id",), entry_counts, balance),)),
    summary="MetaCLIP: count per metadata entry over the pool, balance to t per entry",
    check_inputs=check_inputs,
    describe=describe,
    before=matching,
)
