"""What both engines decide the same way before running a stage.

- Column sources: a column a stage reads comes from the pool, from the output of an
  earlier stage in the same run directory (found through that stage's manifest), or from a
  pool sidecar named ``<dir>:<column>`` (e.g. ``embeddings/b32:image_emb``: the imported
  DataComp B/32 embeddings), which reaches ``apply`` as plain ``image_emb``.
- Fingerprint: a hash of the stage name, its resolved config, the pool's shard list (names,
  sizes, mtimes) and the fingerprints of the stages it reads from. A stage directory whose
  manifest carries another fingerprint is stale and is cleared before the stage runs, so a
  resumed run never mixes partitions computed under two configurations.
- Layout: the local engine writes one output part per pool shard, row-aligned with it
  ("pool-shards"); Spark writes its own partitioning ("spark"), joined by uid.
- Merging fit partials: group by the pass's keys and sum the other columns (no keys: one row of
  sums), then the pass's ``having`` predicate; ``merge_partials`` is the local engine's, Spark's is
  ``groupBy(keys).agg(sum)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract import Pass, Stage, config_dict
from curate.errors import RecipeError
from curate.pool import Shard, shard_columns
from curate.runio import MANIFEST, atomic_write_table, read_manifest

log = logging.getLogger(__name__)

ARTIFACT = "_artifact.parquet"
POOL = "pool"
SIDECAR = ":"


@dataclass(frozen=True)
class Plan:
    stage: Stage
    cfg: Any
    stage_dir: Path
    sources: dict[str, list[str]]  # "pool", an upstream stage or "pool:<sidecar>" -> columns
    source_dirs: dict[str, Path]   # where each non-pool source's part-NNNNN.parquet files are
    fingerprint: str
    description: dict[str, Any] | None = None  # stage.describe(cfg): top-level manifest fields


def stage_output_columns(out_dir: Path) -> dict[str, list[str]]:
    """Columns written by each complete stage in a run directory."""
    found = {}
    for manifest_path in sorted(out_dir.glob(f"*/{MANIFEST}")):
        manifest = read_manifest(manifest_path.parent)
        if manifest and manifest.get("status") == "complete" and "columns" in manifest:
            found[manifest["stage"]] = manifest["columns"]
    return found


def make_plan(stage: Stage, cfg: Any, shards: list[Shard], out_dir: Path) -> Plan:
    pool_dir = shards[0].path.parent
    pool_columns = set(shard_columns(shards[0].path))
    upstream = stage_output_columns(out_dir)
    sources: dict[str, list[str]] = {POOL: ["uid"]}
    source_dirs: dict[str, Path] = {}
    for column in stage.reads(cfg):
        if column == "uid":
            continue
        if SIDECAR in column:
            sidecar, _, name = column.partition(SIDECAR)
            key = f"{POOL}:{sidecar}"
            source_dirs[key] = pool_dir / sidecar
            if read_manifest(source_dirs[key]) is None:
                raise RecipeError(f"stage {stage.name} reads {column!r}, but {source_dirs[key]} holds no sidecar "
                                  f"(no {MANIFEST}); import or compute it first")
            sources.setdefault(key, []).append(name)
            continue
        if column in pool_columns:
            sources[POOL].append(column)
            continue
        owner = next((name for name, cols in upstream.items() if column in cols and name != stage.name), None)
        if owner is None:
            raise RecipeError(
                f"stage {stage.name} reads column {column!r}, which is neither in the pool "
                f"({shards[0].path} has {sorted(pool_columns)}) nor written by an earlier stage in {out_dir}"
            )
        sources.setdefault(owner, []).append(column)
        source_dirs[owner] = out_dir / owner
    manifests = {name: read_manifest(path) for name, path in source_dirs.items()}
    if stage.check_inputs is not None:
        stage.check_inputs(cfg, manifests)
    description = stage.describe(cfg) if stage.describe is not None else None
    fingerprint = _fingerprint(stage, cfg, shards, {n: m["fingerprint"] for n, m in manifests.items()}, description)
    return Plan(stage, cfg, out_dir / stage.name, sources, source_dirs, fingerprint, description)


def _fingerprint(stage: Stage, cfg: Any, shards: list[Shard], upstream: dict[str, str],
                 description: dict[str, Any] | None = None) -> str:
    pool = [(s.path.name, s.path.stat().st_size, s.path.stat().st_mtime_ns, s.rows) for s in shards]
    parts = [stage.name, config_dict(cfg), pool, sorted(upstream.items())]
    blob = json.dumps(parts + ([description] if description is not None else []), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def merge_partials(partials: list[pa.Table], step: Pass, cfg: Any) -> pa.Table:
    """Group the partial tables by the pass's keys and sum the other columns, then filter."""
    frame = pl.from_arrow(pa.concat_tables([step.schema.empty_table(), *partials]))
    sums = [pl.col(c).sum() for c in step.sums()]
    if step.keys:
        merged = frame.group_by(list(step.keys)).agg(sums).sort(list(step.keys))
    else:
        merged = frame.select(sums)
    having = step.having(cfg) if step.having else None
    if having:
        merged = merged.filter(pl.sql_expr(having))
    return merged.to_arrow().select(step.schema.names).cast(step.schema)


def require_local_layout(directories: list[Path]) -> None:
    """The local engine joins earlier outputs positionally, so they must be row-aligned."""
    for directory in directories:
        manifest = read_manifest(directory) or {}
        if manifest.get("layout", "pool-shards") != "pool-shards":
            raise RecipeError(f"{directory} was written by the {manifest.get('engine')} engine; continue "
                              f"this run directory with --engine {manifest.get('engine')}, or use a fresh --out")


def remove_temporaries(directory: Path) -> None:
    """Delete temporary files a killed writer left (hidden names; no reader ever sees them)."""
    for path in directory.glob(".*.tmp-*") if directory.exists() else ():
        path.unlink(missing_ok=True)


def prepare_stage_dir(plan: Plan) -> bool:
    """Clear a stale stage directory. Returns True if the stage is already complete."""
    remove_temporaries(plan.stage_dir)
    remove_temporaries(plan.stage_dir / "_done")
    remove_temporaries(plan.stage_dir / "_carry")
    manifest = read_manifest(plan.stage_dir)
    if manifest is None:
        if plan.stage_dir.exists():
            shutil.rmtree(plan.stage_dir)
        return False
    if manifest.get("fingerprint") != plan.fingerprint:
        log.info("%s: inputs or config changed since the last run; recomputing", plan.stage.name)
        shutil.rmtree(plan.stage_dir)
        return False
    return manifest.get("status") == "complete"


def manifest_fields(plan: Plan, engine: str, layout: str, status: str, **extra: Any) -> dict[str, Any]:
    fields = {
        "stage": plan.stage.name,
        "status": status,
        "engine": engine,
        "layout": layout,
        "fingerprint": plan.fingerprint,
        "config": config_dict(plan.cfg),
        "inputs": {name: cols for name, cols in plan.sources.items()},
        "columns": plan.stage.adds.names,
        **extra,
    }
    clash = set(plan.description or {}) & (set(fields) | {"written_at", "versions"})
    if clash:
        raise RuntimeError(f"stage {plan.stage.name}: describe() returned reserved manifest keys {sorted(clash)}")
    return {**fields, **(plan.description or {})}


def save_artifact(plan: Plan, artifact: pa.Table) -> None:
    atomic_write_table(artifact, plan.stage_dir / ARTIFACT)
    if plan.stage.artifact_name:  # a product in its own right, e.g. DBP's per-cluster statistics
        atomic_write_table(artifact, plan.stage_dir / plan.stage.artifact_name)


_ARTIFACTS: dict[tuple, pa.Table] = {}


def load_artifact(stage_dir: Path) -> pa.Table | None:
    path = stage_dir / ARTIFACT
    return pq.read_table(path) if path.exists() else None


def cached_artifact(stage_dir: Path) -> pa.Table | None:
    """``load_artifact``, read once per process while the file is unchanged (the apply of every
    partition a worker runs needs it; an entry list's artifact is 500k rows)."""
    path = stage_dir / ARTIFACT
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _ARTIFACTS:
        _ARTIFACTS.clear()
        _ARTIFACTS[key] = pq.read_table(path)
    return _ARTIFACTS[key]
