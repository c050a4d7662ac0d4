"""What both engines decide the same way before running a stage.

- Column sources: a column a stage reads comes from the pool, from the output of an
  earlier stage in the same run directory (found through that stage's manifest), or from a
  pool sidecar named ``<dir>:<column>`` (e.g. ``embeddings/b32:image_emb``: the imported
  DataComp B/32 embeddings), which reaches ``apply`` as plain ``image_emb``.
- Fingerprint: a hash of the stage name and its input signatures (``input_signatures``: the
  resolved config and description, every pool shard, every sidecar part it reads, every file its
  config names, the fingerprints of the stages it reads from; curate.fingerprint says how files
  are signed). A stage directory whose manifest carries another fingerprint is stale: the log
  names the inputs that changed, and curate's own files are cleared before the stage runs (files
  it did not write stay), so a resumed run never mixes partitions computed under two inputs.
- Damage: a complete stage whose part files no longer match their completion markers (size,
  footer digest) recomputes those parts (local) or the stage (Spark layout).
- Layout: the local engine writes one output part per pool shard, row-aligned with it
  ("pool-shards"); Spark writes its own partitioning ("spark"), joined by uid.
- Frozen (``curate run --frozen PREVIOUS_OUT``, curate.engines.frozen): a stage with a fit or
  a freeze hook that the previous run has complete takes its artifact from there instead of
  fitting; the previous stage's fingerprint is one of its inputs.
- Merging fit partials: group by the pass's keys and sum the other columns (no keys: one row of
  sums), then the pass's ``having`` predicate; ``merge_partials`` is the local engine's, Spark's is
  ``groupBy(keys).agg(sum)``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate import npzlinks, tarindex
from curate.contract import Pass, Stage, config_dict, config_files
from curate.engines import frozen as freezing
from curate.errors import RecipeError
from curate.fingerprint import digest, file_signature, tail_digest
from curate.outputs import claim, clear_own
from curate.pool import Shard, shard_columns
from curate.resources import resolve_metadata
from curate.runio import MANIFEST, MARKER_DIR, atomic_write_table, damaged_parts, read_manifest

log = logging.getLogger(__name__)

ARTIFACT = "_artifact.parquet"
POOL = "pool"
SIDECAR = ":"
SHUFFLE = "_shuffle"  # the local group path's scratch tree (curate.engines.groups)


@dataclass(frozen=True)
class Plan:
    stage: Stage
    cfg: Any
    stage_dir: Path
    sources: dict[str, list[str]]  # "pool", an upstream stage or "pool:<sidecar>" -> columns
    source_dirs: dict[str, Path]   # where each non-pool source's part-NNNNN.parquet files are
    fingerprint: str
    description: dict[str, Any] | None = None  # stage.describe(cfg): top-level manifest fields
    inputs: dict[str, str] | None = None       # input_signatures: name -> signature
    frozen: Path | None = None                 # PREVIOUS_OUT/<stage> whose fit this run keeps
    fit: dict[str, Any] | None = None          # the manifest's ``fit`` (curate.engines.frozen.fit_field)


def stage_output_columns(out_dir: Path) -> dict[str, list[str]]:
    """Columns written by each complete stage in a run directory."""
    found = {}
    for manifest_path in sorted(out_dir.glob(f"*/{MANIFEST}")):
        manifest = read_manifest(manifest_path.parent)
        if manifest and manifest.get("status") == "complete" and "columns" in manifest:
            found[manifest["stage"]] = manifest["columns"]
    return found


def make_plan(stage: Stage, cfg: Any, shards: list[Shard], out_dir: Path, frozen_root: Path | None = None) -> Plan:
    sources, source_dirs = column_sources(stage, cfg, shards, out_dir)
    manifests = {name: read_manifest(path) for name, path in source_dirs.items()}
    if stage.check_inputs is not None:
        stage.check_inputs(cfg, manifests)
    description = stage.describe(cfg) if stage.describe is not None else None
    inputs = input_signatures(cfg, shards, source_dirs, manifests, description, sources[POOL])
    frozen, previous = freezing.frozen_source(stage, cfg, description, frozen_root) if frozen_root else (None, None)
    if frozen is not None:
        inputs[f"frozen fit {frozen}"] = previous["fingerprint"]
    fingerprint = digest([stage.name, inputs])
    return Plan(stage, cfg, out_dir / stage.name, sources, source_dirs, fingerprint, description, inputs,
                frozen, freezing.fit_field(stage, frozen, previous))


def column_sources(stage: Stage, cfg: Any, shards: list[Shard], out_dir: Path) -> tuple[dict, dict]:
    """Where each column the stage reads comes from: the pool, a sidecar, or an earlier stage."""
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
        elif column in pool_columns:
            sources[POOL].append(column)
        else:
            owner = next((name for name, cols in upstream.items() if column in cols and name != stage.name), None)
            if owner is None:
                raise RecipeError(f"stage {stage.name} reads column {column!r}, which is neither in the pool "
                                  f"({shards[0].path} has {sorted(pool_columns)}) nor written by an earlier "
                                  f"stage in {out_dir}")
            sources.setdefault(owner, []).append(column)
            source_dirs[owner] = out_dir / owner
    return sources, source_dirs


def input_signatures(cfg: Any, shards: list[Shard], source_dirs: dict[str, Path], manifests: dict[str, dict],
                     description: dict[str, Any] | None, pool_columns: list[str] | None = None) -> dict[str, str]:
    """Everything a stage reads, by name -> signature: what its fingerprint is made of."""
    inputs = {"config": digest(config_dict(cfg)), "description": digest(description)}
    inputs.update({shard_key(shard.path): file_signature(shard.path) for shard in shards})
    pool_dir = shards[0].path.parent
    if pool_columns and tarindex.image_column(pool_dir) in pool_columns:  # images read from tar shards
        inputs["tar images"] = tarindex.index_signature(pool_dir)
    for name, directory in source_dirs.items():
        if name.startswith(f"{POOL}:"):
            inputs.update({f"sidecar {directory.name}/{part}": signature
                           for part, signature in npzlinks.part_signatures(directory).items()})
        else:
            inputs[f"stage {name}"] = manifests[name]["fingerprint"]
    for field, value in config_files(cfg).items():
        path = Path(resolve_metadata(str(value)))
        if path.is_file():
            inputs[f"file {field} ({path.name})"] = file_signature(path)
        elif path.is_dir():  # per-language lists (metaclip_worldwide): every file in it
            inputs.update({f"file {field} ({path.name}/{file.name})": file_signature(file)
                           for file in sorted(path.iterdir()) if file.is_file()})
    return inputs


def shard_key(path: Path) -> str:
    return f"pool shard {path.name}"


def changes(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """Which inputs differ, for the log: "pool shard 00003.parquet changed, stage cluster changed"."""
    if old is None:
        return "an earlier version of curate wrote it"
    changed = [f"{key} changed" for key in new if key in old and old[key] != new[key]]
    changed += [f"{key} is new" for key in new if key not in old]
    changed += [f"{key} is gone" for key in old if key not in new]
    more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
    return ", ".join(changed[:6]) + more if changed else "its fingerprint changed"


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


def prepare_output(directory: Path, fingerprint: str, inputs: dict[str, str] | None, label: str,
                   extra: tuple[str, ...] = ()) -> bool:
    """Make ``directory`` ready for output with this fingerprint; True when it is already complete
    and undamaged. Stale or unfinished output of curate is cleared; files curate did not write stay,
    and a directory of someone else's files (no manifest) is refused."""
    claim(directory, MANIFEST, f"{label} output", extra)
    for temporary in (directory, directory / MARKER_DIR):
        remove_temporaries(temporary)
    shutil.rmtree(directory / SHUFFLE, ignore_errors=True)
    manifest = read_manifest(directory)
    if manifest is None:
        clear_own(directory, extra)
        return False
    if manifest.get("fingerprint") != fingerprint:
        log.info("%s: recomputing: %s", label, changes(manifest.get("input_signatures"), inputs or {}))
        clear_own(directory, extra)
        return False
    if manifest.get("status") != "complete":
        return False
    damaged = damaged_output(directory, manifest)
    if damaged:
        log.warning("%s: %d part file(s) missing, truncated or replaced since they were written (%s); "
                    "recomputing them", label, len(damaged), damaged[:5])
        if manifest.get("layout") != "pool-shards":
            clear_own(directory, extra)
        for part in damaged:
            (directory / MARKER_DIR / f"{part}.json").unlink(missing_ok=True)
        return False
    return True


def damaged_output(directory: Path, manifest: dict) -> list[str]:
    """Parts that no longer match what was written: per marker (local), or per the manifest's
    ``part_files`` (Spark layout)."""
    if manifest.get("layout") == "pool-shards":
        return damaged_parts(directory)
    recorded = manifest.get("part_files") or {}
    return [name for name, (size, tail) in recorded.items()
            if not (directory / name).is_file() or (directory / name).stat().st_size != size
            or tail_digest(directory / name) != tail]


def prepare_stage_dir(plan: Plan) -> bool:
    """Clear a stale stage directory. Returns True if the stage is already complete."""
    extra = (plan.stage.artifact_name,) if plan.stage.artifact_name else ()
    return prepare_output(plan.stage_dir, plan.fingerprint, plan.inputs, plan.stage.name, extra)


def install_frozen(plan: Plan) -> pa.Table | None:
    """A frozen stage's artifact, saved in its directory before the apply (so the fit is skipped and a
    killed run resumes with it); the stage's artifact as it stands otherwise."""
    artifact = load_artifact(plan.stage_dir)
    if plan.frozen is not None and artifact is None:
        artifact = freezing.frozen_artifact(plan.stage, plan.cfg, plan.frozen, ARTIFACT)
        if artifact is not None:
            save_artifact(plan, artifact)
        log.info("%s: fit frozen from %s", plan.stage.name, plan.frozen)
    return artifact


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
        "input_signatures": plan.inputs,
        **({"fit": plan.fit} if plan.fit else {}),
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
