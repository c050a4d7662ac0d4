"""MetaCLIP curation (Xu et al. 2023, "Demystifying CLIP Data", section 3), DESIGN.md 4.2.

Substring-match every caption against a metadata entry list (curate.kernels.metaclip_match has the
rule and how it runs fast), count per entry over the WHOLE pool, then balance: an entry
matched by count[e] texts gets p[e] = min(1, t / count[e]), and a text with match set M is
kept with probability 1 - prod over e in M of (1 - p[e]); texts with no match are dropped.

- fit: partial = (entry_id, n_texts) per batch, summed by the engine over the pool;
  finalize = the artifact: one row per entry (entry_id, entry, count, p), len(metadata) rows.
- apply: one uniform per sample from uid_uniform(uid, seed, "metaclip"), so the subset is the
  same on both engines and any partitioning, and ``seed`` (the recipe's) changes it.

Columns added: ``metaclip_entries`` (list<int32>, the ascending ids of the matched entries;
empty when none), ``metaclip_keep``, ``metaclip_reason`` (null when kept, else no_text for a
null caption, no_match, or not_sampled) and ``metaclip_p`` (the keep probability, for loaders
that resample per epoch: MetaCLIP's online curation).

Matching runs twice, in fit and in apply: the stage contract passes nothing per row from the
first pass to the second; matching runs at 190k-330k captions/s on one core with a
500k-entry list (bench/bench_metaclip.py), so the stage costs about twice that.

Metadata with blank entries, repeated entries or entries with outer spaces: see
curate.kernels.metaclip_match (blank never match; a repeat matches under its first id; outer spaces
are matched literally, as the rule says). metadata/README.md describes the built-in list.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels.metaclip_match import Matcher, load_metadata
from curate.resources import metadata_path, missing_metadata, resolve_metadata
from curate.contract import Fit, Stage
from curate.uid import uid_uniform

log = logging.getLogger(__name__)

DEFAULT_METADATA = metadata_path("entries.json.gz")
COUNT_SCHEMA = pa.schema([("entry_id", pa.int64()), ("n_texts", pa.int64())])
ARTIFACT_SCHEMA = pa.schema([("entry_id", pa.int32()), ("entry", pa.string()), ("count", pa.int64()),
                             ("p", pa.float64())])
ADDS = pa.schema([("metaclip_entries", pa.list_(pa.int32())), ("metaclip_keep", pa.bool_()),
                  ("metaclip_reason", pa.string()), ("metaclip_p", pa.float64())])

CARRIED = "_carry_metaclip_entries"  # the fit's matches, handed to apply by the local engine
_MATCHERS: dict[tuple, Matcher] = {}


@dataclass(frozen=True, kw_only=True)
class MetaclipConfig:
    # Defaults: MetaCLIP (Xu et al. 2023): t = 20,000 for a 400M pool (170,000 for 2.5B).
    # JSON list of strings (.json/.json.gz) or one entry per line; a bare file name that is not
    # a file in the working directory is looked up among the shipped metadata (curate.resources)
    metadata: str = DEFAULT_METADATA
    t: int = 20000                    # per-entry cap: p[e] = min(1, t / count[e])
    seed: int = 0                     # the recipe's seed; uid-hashed sampling


def matcher(path: str) -> Matcher:
    """The compiled entry list, built once per process (rebuilt if the file changes)."""
    resolved = Path(resolve_metadata(path)).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _MATCHERS:
        _MATCHERS.clear()
        _MATCHERS[key] = Matcher(load_metadata(resolved))
    return _MATCHERS[key]


def entry_counts(table: pa.Table, cfg: MetaclipConfig, previous: pa.Table | None = None) -> pa.Table:
    """Partial: per entry id, how many texts of this batch match it."""
    return _counts(matcher(cfg.metadata).match(table.column("text")))


def counts_and_matches(table: pa.Table, cfg: MetaclipConfig, previous: pa.Table | None = None) -> tuple[pa.Table, pa.Table]:
    """``entry_counts`` plus the matches themselves, carried to ``apply`` so the local engine
    matches each caption once instead of twice (Fit.partial_carry)."""
    matches = matcher(cfg.metadata).match(table.column("text"))
    return _counts(matches), pa.table({CARRIED: matches})


def _counts(matches: pa.Array) -> pa.Table:
    ids = matches.flatten().to_numpy()
    counts = np.bincount(ids, minlength=0) if ids.size else np.zeros(0, dtype=np.int64)
    matched = np.flatnonzero(counts)
    return pa.table({"entry_id": matched.astype(np.int64), "n_texts": counts[matched].astype(np.int64)},
                    schema=COUNT_SCHEMA)


def sampling_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """p[e] = min(1, t / count[e]); an entry nothing matches gets 1 (it is never used)."""
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, t / counts.astype(np.float64))


def balance(merged: pa.Table, cfg: MetaclipConfig, previous: pa.Table | None = None) -> pa.Table:
    """Finalize: the pool-wide count and p of every entry, in id order."""
    if cfg.t < 1:
        raise ValueError(f"metaclip.t must be >= 1, got {cfg.t}")
    entries = load_metadata(resolve_metadata(cfg.metadata))
    counts = np.zeros(len(entries), dtype=np.int64)
    counts[merged.column("entry_id").to_numpy()] = merged.column("n_texts").to_numpy()
    return pa.table({"entry_id": np.arange(len(entries), dtype=np.int32), "entry": pa.array(entries, pa.string()),
                     "count": counts, "p": sampling_probabilities(counts, cfg.t)}, schema=ARTIFACT_SCHEMA)


def keep_probability(matches: pa.Array, p: np.ndarray) -> np.ndarray:
    """Per text, 1 - prod over its entries of (1 - p[e]); 0 for a text with no match."""
    offsets = matches.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    q = 1.0 - p[matches.flatten().to_numpy()]
    lengths = np.diff(offsets)
    keep_none = np.ones(len(matches), dtype=np.float64)  # probability that no entry keeps the text
    nonempty = lengths > 0
    if q.size:
        keep_none[nonempty] = np.multiply.reduceat(q, offsets[:-1][nonempty])
    return 1.0 - keep_none


def apply(table: pa.Table, cfg: MetaclipConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("metaclip: the entry counts were not fitted; run the stage through an engine")
    text = table.column("text")
    p = artifact.column("p").to_numpy()
    if CARRIED in table.column_names:  # matched during the fit (the metadata's hash is in the fingerprint)
        matches = table.column(CARRIED).combine_chunks()
    else:
        compiled = matcher(cfg.metadata)
        if len(p) != compiled.size:
            raise RuntimeError(f"metaclip: the fitted counts have {len(p)} entries, {cfg.metadata} has "
                               f"{compiled.size}; the metadata changed since the fit")
        matches = compiled.match(text)
    probability = keep_probability(matches, p)
    keep = uid_uniform(table.column("uid"), cfg.seed, "metaclip") < probability
    no_text = np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False), dtype=bool)
    no_match = np.diff(matches.offsets.to_numpy()) == 0
    reason = np.where(no_text, "no_text", np.where(no_match, "no_match", np.where(keep, None, "not_sampled")))
    return pa.table({"metaclip_entries": matches, "metaclip_keep": pa.array(keep, pa.bool_()),
                     "metaclip_reason": pa.array(reason.tolist(), pa.string()), "metaclip_p": probability})


def describe(cfg: MetaclipConfig) -> dict:
    """The metadata file's content hash: editing the list in place re-runs the stage."""
    path = resolve_metadata(cfg.metadata)
    if not Path(path).is_file():
        raise FileNotFoundError(missing_metadata(path))
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"metadata_sha256": digest.hexdigest()}


STAGE = Stage(
    name="metaclip",
    config=MetaclipConfig,
    reads=lambda cfg: ("uid", "text"),
    adds=ADDS,
    apply=apply,
    fit=Fit(partial=entry_counts, keys=("entry_id",), finalize=balance, partial_carry=counts_and_matches),
    summary="MetaCLIP: substring-match a metadata entry list, count per entry, balance to t per entry",
    describe=describe,
)
