"""Density-based pruning, DBP (Abbas et al., ICLR 2024, "Effective pruning of web-scale datasets
based on complexity of concept clusters"), DESIGN.md 4.4, on the rows SemDeDup kept.

1. A fresh spherical k-means (curate.kernels.kmeans) of the deduplicated rows (``semdedup_keep`` with a
   usable embedding): fit passes 1-2 count them and train on a uid-hashed sample, as ``cluster``.
2. Fit pass 3: per cluster, the member count and the sum of cosine distances to the centroid
   as FIXED-POINT int64 (round(d * 2**30) per row), so the sums are exact and the same on every
   engine and partitioning. Finalize: d_intra(j) = mean distance; d_inter(j) = mean cosine
   distance from centroid j to its 20 nearest other centroids (all others if fewer);
   C_j = d_inter * d_intra (NaN, e.g. an empty cluster or k = 1, -> mean of the others, 0 if
   none); shares = softmax(C / 0.5); N = floor(keep_fraction * total deduplicated rows).
3. Quotas (``quotas``): x_j = clip(share_j * N + lambda, lb_j, n_j), lb_j = max(0, min(int(0.5 * N / k),
   n_j - 1)), lambda found by bisection so that sum x_j = N. Rounding: floor, then the remaining
   units go to the largest fractional parts (ties by cluster id), so the sum is exactly N and
   every x_j stays in [lb_j, n_j].
4. Per cluster (Stage.group_by = the DBP cluster of each deduplicated row): keep the x_j members
   farthest from the centroid (ascending ``dbp_cluster_sim``, ties by uid).

The artifact (OUT/dbp/_artifact.parquet, published as OUT/dbp/clusters.parquet) is the per-cluster table: centroid_id, centroid, size,
d_intra, d_inter, complexity, share, quota, target (N).

Frozen (``curate run --frozen PREVIOUS_OUT``): the centroids stay, and each cluster's quota becomes
its previous cut-off: the (dbp_cluster_sim, uid) of the last member the previous run kept. A row is
kept iff it is at or before that cut-off in the keep order (the artifact's ``cutoff_sim`` and
``cutoff_uid``; null when the cluster kept nothing), which gives every previous row its previous
decision and keeps a new row iff it is at least as far from its centroid. So a cluster keeps the
same density share as it grows, not the same count (curate's decision: quotas are counts of one
pool and do not carry over).

Columns added: ``dbp_cluster_id`` (int32), ``dbp_cluster_sim`` (float32) for every row with a
usable embedding; ``dbp_keep``; ``dbp_reason`` (null when kept, ``semdedup`` for rows SemDeDup
removed or never kept, no_embedding / non_finite / zero_norm, or ``pruned``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Fit, Freeze, Pass, Stage
from curate.errors import RecipeError
from curate.kernels import kmeans
from curate.kernels.embeddings import MODALITIES, check_embeddings, vector_names, vector_specs
from curate.kernels.vectors import unit_vectors

log = logging.getLogger(__name__)

FIXED_POINT = float(2 ** 30)
COUNT_SCHEMA = pa.schema([("rows", pa.int64()), ("usable", pa.int64())])
SUMS_SCHEMA = pa.schema([("cluster", pa.int32()), ("rows", pa.int64()), ("distance", pa.int64())])


@dataclass(frozen=True, kw_only=True)
class DbpConfig:
    # Defaults: DBP (Abbas et al. 2024): k = 100 for DataComp medium (500 for LAION-scale pools),
    # softmax temperature 0.5, d_inter over the 20 nearest centroids, floor 0.5 * N / k.
    keep_fraction: float | None = None    # required: the share of the deduplicated rows to keep
    clusters: int = 100
    temperature: float = 0.5
    neighbours: int = 20
    floor_fraction: float = 0.5
    iterations: int = 25
    max_points_per_centroid: int = 256
    seed: int = 0
    embeddings: str = "b32"
    modality: str = "image"
    random_weights_ok: bool = False     # accept embeddings made with random weights (recipe: random_weights)

    def __post_init__(self):
        if self.keep_fraction is None or not 0.0 <= self.keep_fraction <= 1.0:
            raise RecipeError("dbp: keep_fraction is required, 0 <= keep_fraction <= 1 (e.g. --set keep_fraction=0.5)")
        if self.modality not in MODALITIES or self.clusters < 1 or self.temperature <= 0 or self.neighbours < 1:
            raise RecipeError(f"dbp: need modality in {MODALITIES}, clusters >= 1, temperature > 0, neighbours >= 1")


def candidates(table: pa.Table, cfg: DbpConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit rows, reasons, rows SemDeDup kept that have a usable embedding)."""
    vectors, reason = unit_vectors([table.column(name) for name in vector_names(cfg.embeddings, cfg.modality)])
    kept = pc.fill_null(table.column("semdedup_keep"), False).to_numpy(zero_copy_only=False)
    return vectors, reason, np.asarray(kept, dtype=bool) & (reason == None)  # noqa: E711


def count_candidates(table: pa.Table, cfg: DbpConfig, previous: None) -> pa.Table:
    """Pass ``count``: the deduplicated rows with a usable embedding."""
    usable = int(candidates(table, cfg)[2].sum()) if table.num_rows else 0
    return pa.table({"rows": [table.num_rows], "usable": [usable]}, schema=COUNT_SCHEMA)


def candidate_total(merged: pa.Table, cfg: DbpConfig, previous: None) -> pa.Table:
    sums = merged.to_pylist()[0] if merged.num_rows else {}
    return pa.table({"usable_rows": [int(sums.get("usable") or 0)], "rows": [int(sums.get("rows") or 0)]})


def sample_partial(table: pa.Table, cfg: DbpConfig, previous: pa.Table) -> pa.Table:
    """Pass ``sample``: the candidates whose uid-hashed uniform is below k * max_points / n."""
    if table.num_rows == 0:
        return kmeans.SAMPLE_SCHEMA.empty_table()
    _, _, chosen = candidates(table, cfg)
    rate = kmeans.sample_rate(cfg.clusters, cfg.max_points_per_centroid, previous.column("usable_rows")[0].as_py())
    rows = table.filter(pa.array(chosen & kmeans.in_sample(table.column("uid"), rate, cfg.seed, "dbp")))
    return kmeans.sample_table(rows, vector_names(cfg.embeddings, cfg.modality))


def train_centroids(merged: pa.Table, cfg: DbpConfig, previous: pa.Table) -> pa.Table:
    vectors = kmeans.sample_vectors(merged, len(vector_names(cfg.embeddings, cfg.modality)))
    centroids = kmeans.fit_clusters(vectors, cfg.clusters, iterations=cfg.iterations, seed=cfg.seed,
                                    max_points_per_centroid=cfg.max_points_per_centroid, stage="dbp",
                                    rows=previous.column("rows")[0].as_py())
    total = previous.column("usable_rows")[0].as_py()
    return pa.table({"centroid_id": pa.array(np.arange(len(centroids)), pa.int32()),
                     "centroid": kmeans.centroid_column(centroids), "usable_rows": np.full(len(centroids), total)})


def distance_sums(table: pa.Table, cfg: DbpConfig, previous: pa.Table) -> pa.Table:
    """Pass ``distances``: per cluster, members and the fixed-point sum of cosine distances."""
    if table.num_rows == 0:
        return SUMS_SCHEMA.empty_table()
    vectors, _, chosen = candidates(table, cfg)
    ids, sims = kmeans.assign(vectors[chosen], kmeans.centroid_matrix(previous))
    fixed = np.rint((1.0 - sims.astype(np.float64)) * FIXED_POINT).astype(np.int64)
    count = previous.num_rows
    sums = np.zeros(count, dtype=np.int64)
    np.add.at(sums, ids, fixed)
    return pa.table({"cluster": np.arange(count, dtype=np.int32), "rows": np.bincount(ids, minlength=count).astype(np.int64),
                     "distance": sums}, schema=SUMS_SCHEMA)


def cluster_quotas(merged: pa.Table, cfg: DbpConfig, previous: pa.Table) -> pa.Table:
    """Finalize ``distances``: the per-cluster table with complexities and quotas."""
    total = previous.column("usable_rows")[0].as_py() if previous.num_rows else 0
    per_cluster = merged.sort_by("cluster")
    sizes = np.zeros(previous.num_rows, dtype=np.int64)
    distance = np.zeros(previous.num_rows, dtype=np.int64)
    index = per_cluster.column("cluster").to_numpy()
    sizes[index], distance[index] = per_cluster.column("rows").to_numpy(), per_cluster.column("distance").to_numpy()
    return cluster_table(previous, sizes, distance, int(np.floor(cfg.keep_fraction * total)), cfg)


def cluster_table(previous: pa.Table, sizes: np.ndarray, distance: np.ndarray, target: int, cfg: DbpConfig) -> pa.Table:
    centroids = kmeans.centroid_matrix(previous).astype(np.float64)
    if len(centroids) == 0:  # an empty pool: no clusters, nothing to keep
        return pa.table({"centroid_id": previous.column("centroid_id"), "centroid": previous.column("centroid"),
                         **{name: pa.array([], pa.float64()) for name in ("d_intra", "d_inter", "complexity", "share")},
                         "size": pa.array([], pa.int64()), "quota": pa.array([], pa.int64()),
                         "target": pa.array([], pa.int64())}).select(
            ["centroid_id", "centroid", "size", "d_intra", "d_inter", "complexity", "share", "quota", "target"])
    with np.errstate(invalid="ignore", divide="ignore"):
        d_intra = distance / FIXED_POINT / sizes
    d_inter = inter_distances(centroids, cfg.neighbours)
    complexity = d_inter * d_intra
    finite = np.isfinite(complexity)
    complexity[~finite] = complexity[finite].mean() if finite.any() else 0.0
    shares = softmax(complexity / cfg.temperature)
    _, quota = quotas(shares, sizes, target, cfg.floor_fraction)
    log.info("dbp: keep %d of %d rows over %d clusters", target, int(sizes.sum()), len(sizes))
    return pa.table({"centroid_id": previous.column("centroid_id"), "centroid": previous.column("centroid"),
                     "size": sizes, "d_intra": d_intra, "d_inter": d_inter, "complexity": complexity,
                     "share": shares, "quota": quota, "target": np.full(len(sizes), target, np.int64)})


def inter_distances(centroids: np.ndarray, neighbours: int) -> np.ndarray:
    """Mean cosine distance from each centroid to its ``neighbours`` nearest other centroids."""
    count = len(centroids)
    if count < 2:
        return np.full(count, np.nan)
    distances = 1.0 - centroids @ centroids.T
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :min(neighbours, count - 1)]
    return nearest.mean(axis=1)


def softmax(values: np.ndarray) -> np.ndarray:
    weights = np.exp(values - values.max())
    return weights / weights.sum()


def quotas(shares: np.ndarray, sizes: np.ndarray, target: int, floor_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(real quotas, integer quotas): clipped water-filling with lambda by bisection, then
    floor + largest fractional parts (ties by cluster id); integer sum exactly ``target``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    lower = np.maximum(0, np.minimum(int(floor_fraction * target / len(sizes)), sizes - 1)).astype(np.float64)
    base, upper = np.asarray(shares, dtype=np.float64) * target, sizes.astype(np.float64)
    low, high = -base.max() - 1.0, upper.max() + 1.0  # sum at low = sum(lower) <= target <= sum(sizes) = sum at high
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if np.clip(base + middle, lower, upper).sum() < target else (low, middle)
    real = np.clip(base + high, lower, upper)
    whole = np.floor(real).astype(np.int64)
    order = np.lexsort((np.arange(len(sizes)), -(real - whole)))
    order = order[whole[order] < sizes[order]]
    whole[order[:max(0, target - int(whole.sum()))]] += 1
    return real, whole


def group_key(table: pa.Table, cfg: DbpConfig, artifact: pa.Table) -> pa.Array:
    vectors, _, chosen = candidates(table, cfg)
    ids = np.zeros(table.num_rows, dtype=np.int64)
    ids[chosen] = kmeans.assign(vectors[chosen], kmeans.centroid_matrix(artifact))[0]
    return pa.array(ids, pa.int64(), mask=~chosen)


def apply(table: pa.Table, cfg: DbpConfig, artifact: pa.Table | None) -> pa.Table:
    if artifact is None:
        raise RuntimeError("dbp: the clusters were not fitted; run the stage through an engine")
    vectors, reason, chosen = candidates(table, cfg)
    usable = reason == None  # noqa: E711
    ids, sims = np.zeros(table.num_rows, np.int32), np.zeros(table.num_rows, np.float32)
    ids[usable], sims[usable] = kmeans.assign(vectors[usable], kmeans.centroid_matrix(artifact))
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    if "cutoff_sim" in artifact.column_names:  # a frozen run
        keep = chosen & within_cutoff(ids, sims, uids, artifact)
    else:
        keep = within_quota(ids, sims, uids, chosen, artifact.column("quota").to_numpy())
    semdedup = ~np.asarray(pc.fill_null(table.column("semdedup_keep"), False).to_numpy(zero_copy_only=False), bool)
    reason = np.where(semdedup, "semdedup", np.where(usable, np.where(keep, None, "pruned"), reason))
    return pa.table({"dbp_cluster_id": pa.array(ids, pa.int32(), mask=~usable),
                     "dbp_cluster_sim": pa.array(sims, pa.float32(), mask=~usable),
                     "dbp_keep": keep, "dbp_reason": pa.array(reason, pa.string())})


def within_quota(ids: np.ndarray, sims: np.ndarray, uids: np.ndarray, chosen: np.ndarray,
                 quota: np.ndarray) -> np.ndarray:
    """Per cluster (one, when called per group): its quota of members farthest from the centroid."""
    keep = np.zeros(len(ids), dtype=bool)
    for cluster in np.unique(ids[chosen]):
        members = np.flatnonzero(chosen & (ids == cluster))
        uid_rank = np.argsort(np.argsort(uids[members], kind="stable"), kind="stable")
        farthest = members[np.lexsort((uid_rank, sims[members]))]
        keep[farthest[:quota[cluster]]] = True
    return keep


def within_cutoff(ids: np.ndarray, sims: np.ndarray, uids: np.ndarray, artifact: pa.Table) -> np.ndarray:
    """Per row: at or before its cluster's frozen cut-off in the keep order (similarity, then uid)."""
    cut_sim = artifact.column("cutoff_sim").to_numpy(zero_copy_only=False)[ids]
    cut_uid = np.asarray(artifact.column("cutoff_uid").to_pylist(), dtype=object)[ids]
    with np.errstate(invalid="ignore"):
        before = sims < cut_sim
    tied = (sims == cut_sim) & (cut_uid != None)  # noqa: E711
    tied[tied] = uids[tied] <= cut_uid[tied]
    return before | tied


def freeze(previous: pa.Table, cfg: DbpConfig, artifact: pa.Table) -> pa.Table:
    """A frozen run's artifact: the previous clusters with each one's cut-off, the (similarity, uid) of
    the last member it kept (null: it kept none)."""
    import polars as pl

    kept = (pl.from_arrow(previous).filter(pl.col("dbp_keep")).sort(["dbp_cluster_sim", "uid"])
            .group_by("dbp_cluster_id").agg(pl.col("dbp_cluster_sim").last(), pl.col("uid").last()))
    artifact = artifact.drop_columns([name for name in ("cutoff_sim", "cutoff_uid") if name in artifact.column_names])
    cut_sim = np.full(artifact.num_rows, np.nan, dtype=np.float32)
    cut_uid = np.full(artifact.num_rows, None, dtype=object)
    clusters = kept.get_column("dbp_cluster_id").to_numpy()
    cut_sim[clusters] = kept.get_column("dbp_cluster_sim").to_numpy()
    cut_uid[clusters] = kept.get_column("uid").to_list()
    return (artifact.append_column("cutoff_sim", pa.array(cut_sim, pa.float32(), mask=np.isnan(cut_sim)))
            .append_column("cutoff_uid", pa.array(cut_uid, pa.string())))


def reads(cfg: DbpConfig) -> tuple[str, ...]:
    return ("uid", "semdedup_keep", *vector_specs(cfg.embeddings, cfg.modality))


def check_inputs(cfg: DbpConfig, manifests: dict[str, dict]) -> None:
    check_embeddings("dbp", cfg.embeddings, None, cfg.random_weights_ok, manifests)


STAGE = Stage(
    name="dbp",
    config=DbpConfig,
    reads=reads,
    adds=pa.schema([("dbp_cluster_id", pa.int32()), ("dbp_cluster_sim", pa.float32()), ("dbp_keep", pa.bool_()),
                    ("dbp_reason", pa.string())]),
    apply=apply,
    fit=Fit(passes=(Pass("count", COUNT_SCHEMA, (), count_candidates, candidate_total),
                    Pass("sample", kmeans.SAMPLE_SCHEMA, ("uid", "vector"), sample_partial, train_centroids),
                    Pass("distances", SUMS_SCHEMA, ("cluster",), distance_sums, cluster_quotas))),
    summary="DBP: re-cluster the deduplicated rows; keep per-cluster quotas by complexity, farthest members first",
    group_by=group_key,
    check_inputs=check_inputs,
    artifact_name="clusters.parquet",
    freeze=Freeze(reads=("uid", "dbp_cluster_id", "dbp_cluster_sim", "dbp_keep"), finalize=freeze),
)
