"""SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication"), DESIGN.md 4.3, per cluster of the ``cluster`` stage.

Within a cluster, members are ordered by descending cosine distance to the centroid (ascending
``cluster_sim``, farthest first), ties by uid. Member j is removed iff its largest cosine
similarity to ANY earlier member (removed or not) is > 1 - eps; the first member and a cluster
of one always stay. ``semdedup_duplicate_of`` is the uid of the EARLIEST member in that order
whose similarity to j is > 1 - eps. With ``prefer_column`` (e.g. a DFN score) the order is that
column descending instead (null/NaN last), ties by uid, so of a set of duplicates the one with
the highest score is kept.

Numerics: similarities are float32 dot products of the unit rows (curate.kernels.vectors.normalise) and
compared with float32(1 - eps). The similarity matrix is never materialised: ``first_duplicates``
takes blocks of rows against all earlier rows (a block holds at most ``BLOCK_ELEMENTS`` floats),
which is the dense rule exactly, so a cluster costs its n x dim float32 vectors plus one block
(a 1M-member cluster of 512-d vectors: 2 GB + 64 MB). Clusters must fit that way in one
worker; the fit caps nothing, so choose k so the largest cluster fits (k-means with
max_points_per_centroid keeps clusters far below this at n / k ~ 10^4).

``relative_eps`` (instead of ``eps``; curate's own decision, not the paper's): a cluster's eps is
relative_eps x the median, over its members, of the cosine distance to their nearest other member
(curate.kernels.dedup), so "duplicate" means far closer than distinct samples of this embedding
space usually are. A fixed eps depends on the model: the paper's 0.07 is for CLIP ViT-B/32 on LAION,
while the demo's 64-d DFN puts distinct drawings at distance ~0.006 and planted copies at ~0.0001.
``curate calibrate semdedup`` shows both scales on a pool.

Per-group work runs through the engines' group path (Stage.group_by = ``cluster_id``): local,
a bounded shuffle through files; Spark, ``groupBy().applyInArrow``. Rows without a cluster
(no usable embedding) are not kept: ``semdedup_reason`` is the cluster stage's reason.

Frozen (``curate run --frozen PREVIOUS_OUT``, the cluster stage frozen with it): the rows the
previous run decided keep its decisions (the artifact is its uid, keep, duplicate_of, sorted by
uid); each new row of a cluster is compared with the previously KEPT rows of that cluster first,
then with the earlier new rows (removed or not, as the paper), in dedup order; duplicate_of names
the earliest match in that order. relative_eps is then measured over the cluster's previous
members only, so the eps the previous rows were decided with is the one new rows meet.

Columns added: ``semdedup_keep``; ``semdedup_duplicate_of`` (uid, removed rows only);
``semdedup_reason`` (null when kept, ``duplicate``, or no_embedding / non_finite / zero_norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Freeze, Stage
from curate.errors import RecipeError
from curate.kernels.dedup import first_duplicates, neighbour_similarities, relative_eps
from curate.kernels.embeddings import MODALITIES, check_embeddings, vector_names, vector_specs
from curate.kernels.vectors import unit_vectors


@dataclass(frozen=True, kw_only=True)
class SemDedupConfig:
    # Defaults: SemDeDup (Abbas et al. 2023): eps = 0.07 keeps about 63% of LAION-440M.
    eps: float | None = 0.07
    relative_eps: float | None = None  # instead of eps: per cluster, this x its median nearest-neighbour distance
    embeddings: str = "b32"            # must be the cluster stage's embeddings and modality
    modality: str = "image"
    prefer_column: str | None = None   # order by this column (descending) instead of distance
    random_weights_ok: bool = False     # accept embeddings made with random weights (recipe: random_weights)

    def __post_init__(self):
        if (self.eps is None) == (self.relative_eps is None):
            raise RecipeError("semdedup: set exactly one of eps and relative_eps (eps: null for relative_eps)")
        if (self.eps is not None and not 0.0 <= self.eps <= 2.0) or (self.relative_eps is not None and not
                                                                     0.0 < self.relative_eps <= 1.0):
            raise RecipeError("semdedup: need 0 <= eps <= 2, or 0 < relative_eps <= 1")
        if self.modality not in MODALITIES:
            raise RecipeError(f"semdedup: modality must be one of {MODALITIES}")


def dedup_order(table: pa.Table, cfg: SemDedupConfig) -> np.ndarray:
    """Row indices grouped by cluster (ascending id, nulls last), each cluster in dedup order:
    farthest first (or prefer_column descending, null/NaN last), ties by uid."""
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    if cfg.prefer_column is None:
        primary = np.asarray(table.column("cluster_sim").to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        score = pc.cast(table.column(cfg.prefer_column), pa.float64()).to_numpy(zero_copy_only=False)
        primary = np.where(np.isnan(score), np.inf, -score)
    clusters = pc.fill_null(table.column("cluster_id"), np.iinfo(np.int32).max).to_numpy()
    uid_rank = np.argsort(np.argsort(uids, kind="stable"), kind="stable")
    return np.lexsort((uid_rank, primary, clusters))


def apply(table: pa.Table, cfg: SemDedupConfig, artifact: pa.Table | None = None) -> pa.Table:
    count = table.num_rows
    keep = np.zeros(count, dtype=bool)
    duplicate_of = np.full(count, None, dtype=object)
    reason = np.asarray(table.column("cluster_reason").to_pylist(), dtype=object)
    order = dedup_order(table, cfg)
    order = order[pc.is_valid(table.column("cluster_id")).to_numpy(zero_copy_only=False)[order]]
    if len(order):
        vectors, _ = unit_vectors([table.take(order).column(name) for name in vector_names(cfg.embeddings, cfg.modality)])
        clusters = table.column("cluster_id").take(order).to_numpy()
        uids = np.asarray(table.column("uid").take(order).to_pylist(), dtype=object)
        known = previous_rows(artifact, uids)
        starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(order)]):  # one cluster, when called per group
            if artifact is None:
                first = first_duplicates(vectors[start:stop], cluster_eps(vectors[start:stop], cfg))
                kept, matched = first < 0, uids[start:stop][np.maximum(first, 0)]
            else:
                kept, matched = frozen_cluster(vectors[start:stop], uids[start:stop], known[start:stop], artifact, cfg)
            positions = order[start:stop]
            keep[positions] = kept
            reason[positions] = np.where(kept, None, "duplicate")
            duplicate_of[positions[~kept]] = matched[~kept]
    return pa.table({"semdedup_keep": keep, "semdedup_duplicate_of": pa.array(duplicate_of, pa.string()),
                     "semdedup_reason": pa.array(reason, pa.string())})


def frozen_cluster(vectors: np.ndarray, uids: np.ndarray, known: np.ndarray, artifact: pa.Table,
                   cfg: SemDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keep, duplicate_of) of one cluster's members (dedup order) in a frozen run: previous rows
    (``known``: their row in the artifact, else -1) as decided then; new rows against the previously
    kept rows, then the earlier new rows."""
    old = known >= 0
    keep, matched = np.zeros(len(uids), dtype=bool), np.full(len(uids), None, dtype=object)
    keep[old] = artifact.column("keep").take(known[old]).to_numpy(zero_copy_only=False)  # this cluster's rows only
    matched[old] = np.asarray(artifact.column("duplicate_of").take(known[old]).to_pylist(), dtype=object)
    new = np.flatnonzero(~old)
    if len(new):
        compared = np.r_[np.flatnonzero(old & keep), new]
        first = first_duplicates(vectors[compared], cluster_eps(vectors[old] if old.any() else vectors, cfg))
        first = first[len(compared) - len(new):]
        keep[new] = first < 0
        matched[new[first >= 0]] = uids[compared[first[first >= 0]]]
    return keep, matched


_SORTED_UIDS: list = []  # [(artifact, its uids as a sorted fixed-width bytes array)]: one per process


def previous_rows(artifact: pa.Table | None, uids: np.ndarray) -> np.ndarray:
    """Each uid's row in a frozen run's artifact (sorted by uid), -1 for a uid it does not hold."""
    if artifact is None:
        return np.full(len(uids), -1, dtype=np.int64)
    if not _SORTED_UIDS or _SORTED_UIDS[0][0] is not artifact:
        _SORTED_UIDS[:] = [(artifact, np.asarray([uid.encode() for uid in artifact.column("uid").to_pylist()], dtype=bytes))]
    known = _SORTED_UIDS[0][1]
    query = np.asarray([uid.encode() for uid in uids], dtype=bytes)
    found = np.minimum(np.searchsorted(known, query), max(len(known) - 1, 0))
    hit = (known[found] == query) if len(known) else np.zeros(len(uids), dtype=bool)
    return np.where(hit, found, -1)


def freeze(previous: pa.Table, cfg: SemDedupConfig, artifact: None) -> pa.Table:
    """A frozen run's artifact: the previous run's decisions by uid, sorted by uid."""
    ordered = previous.take(pc.sort_indices(previous, [("uid", "ascending")]))
    return pa.table({"uid": ordered.column("uid"), "keep": pc.fill_null(ordered.column("semdedup_keep"), False),
                     "duplicate_of": ordered.column("semdedup_duplicate_of")})


def cluster_eps(vectors: np.ndarray, cfg: SemDedupConfig) -> float:
    """The eps a cluster is deduplicated with: the config's, or relative_eps x the cluster's median
    nearest-neighbour cosine distance (curate.kernels.dedup.relative_eps)."""
    if cfg.eps is not None:
        return cfg.eps
    return relative_eps(neighbour_similarities(vectors)[1], cfg.relative_eps)


def check_inputs(cfg: SemDedupConfig, manifests: dict[str, dict]) -> None:
    check_embeddings("semdedup", cfg.embeddings, None, cfg.random_weights_ok, manifests)
    fitted = (manifests.get("cluster") or {}).get("config", {})
    for key in ("embeddings", "modality"):
        if key in fitted and fitted[key] != getattr(cfg, key):
            raise RecipeError(f"semdedup.{key} is {getattr(cfg, key)!r} but the cluster stage used {fitted[key]!r}; "
                              f"set them alike")


def reads(cfg: SemDedupConfig) -> tuple[str, ...]:
    return ("uid", "cluster_id", "cluster_sim", "cluster_reason", *vector_specs(cfg.embeddings, cfg.modality),
            *((cfg.prefer_column,) if cfg.prefer_column else ()))


def group_key(table: pa.Table, cfg: SemDedupConfig, artifact: None) -> pa.ChunkedArray:
    """One group per k-means cluster; rows without one (no usable embedding) take part in none."""
    return table.column("cluster_id")


STAGE = Stage(
    name="semdedup",
    config=SemDedupConfig,
    reads=reads,
    adds=pa.schema([("semdedup_keep", pa.bool_()), ("semdedup_duplicate_of", pa.string()),
                    ("semdedup_reason", pa.string())]),
    apply=apply,
    summary="SemDeDup: per cluster, drop members with cosine > 1 - eps to an earlier (farther) member",
    check_inputs=check_inputs,
    group_by=group_key,
    freeze=Freeze(reads=("uid", "semdedup_keep", "semdedup_duplicate_of"), finalize=freeze),
)
