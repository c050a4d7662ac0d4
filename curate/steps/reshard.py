"""`curate reshard`: a run's selected samples -> webdataset tar shards that open_clip trains on.

Reproduces DataComp's resharder (Gadre et al. 2023, mlfoundations/datacomp ``resharder.py``), reading
a pool's image bytes (``jpg``) from its parquet shards or, in place, from its webdataset tars (curate.tarindex):

- selection: RUN_DIR/subset.npy (or a ``.npy`` given directly; dtype exactly ``u8,u8``), else the
  uids of RUN_DIR/subset/part-*.parquet. A uid repeated n times is written as n samples;
- output: ``{:08d}.tar`` of ``shard_size`` samples with KEY.jpg (the pool's bytes, unchanged unless
  blurred), KEY.txt (caption) and KEY.json (key, uid, the pool's scalar metadata and the curation
  columns of RUN_DIR/subset/: the columns the pool lacks that JSON can carry; binary embeddings are
  left out, NaN is null). KEY is the running sample index, zero-padded (img2dataset's keys; DataComp
  names repeats ``uid-j``). ``{:08d}_stats.json`` per shard (count, successes, failures, bytes, uids)
  and ``_manifest.json`` for the whole output;
- order: the pool's, repeats adjacent (DataComp's); ``shuffle`` sorts by a hash of (uid, seed, copy),
  which depends on neither the pool's sharding nor the engine;
- ``blur_faces``: the ``face_bboxes`` boxes are blurred and the image re-encoded as JPEG (see
  curate/shard_writer.py); samples without boxes keep their bytes. A box that is not 4 finite numbers
  with x0 <= x1, y0 <= y1 stops the run naming the uid (nobody can say what to blur); coordinates
  outside 0..1 are clipped to the image, with a warning and the count and examples in the manifest
  (detectors report faces cut by the frame that way; refusing them would lose the whole run).

Bad input: subset uids missing from the pool or a pool without image bytes stop the run before
anything is written; a selected row without image bytes (a failed download) or undecodable for
blurring is not written, and its shard's stats count it per reason and list its uid.

Engines: local (a process pool over output shards, each reading the pool shards its samples come
from; shuffled, the selected rows are first scattered in output order to Arrow files, temporary disk
about the size of the selection) and Spark (the same scatter and gather tasks as Spark tasks, each
reading its pool shards from the filesystem itself: no image bytes through the JVM; the pool and
the output directory must be a filesystem the executors see). Memory: the plan (uids and curation columns of the selection) on the driver, one
pool shard and one output shard per worker. Both engines write byte-identical shards. Files are
written to a temporary name and renamed; a shard is done when its stats file exists; a re-run with
the same settings and inputs skips done shards, other settings or inputs rewrite the output.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.engines import Session, open_session
from curate.engines.plan import remove_temporaries
from curate.errors import ReshardError
from curate.fingerprint import digest, file_signature
from curate.outputs import claim, directory_lock
from curate.pool import Shard, read_shard, scan_shards, shard_schema
from curate.runio import MANIFEST, read_json, read_manifest, write_manifest
from curate.steps.resharding import COPY, POOL_ROW, POOL_SHARD, SAMPLE, SHARD, WORK, run_local, run_spark
from curate.steps.tars import FACES, attach_curation, check_face_boxes, json_type, load_curation
from curate.tarindex import index_files
from curate.uid import SUBSET_DTYPE, pairs_to_uids, uid_pairs, uid_uniform

log = logging.getLogger(__name__)



@dataclass(frozen=True, kw_only=True)
class ReshardConfig:
    shard_size: int = 10000    # samples per tar, DataComp's resharder default
    shuffle: bool = False
    seed: int = 0
    blur_faces: bool = False
    jpeg_quality: int = 95     # re-encoding of blurred images only
    image_column: str = "jpg"  # img2dataset's name for the image bytes
    text_column: str = "text"

    def __post_init__(self):
        if self.shard_size < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ReshardError(f"shard_size must be >= 1 and jpeg_quality 1..100, not {self.shard_size}, {self.jpeg_quality}")


@dataclass(frozen=True)
class ShardSpec:
    """What a shard writer needs, picklable for process pools and Spark tasks."""
    out: str
    cfg: ReshardConfig
    pool_columns: tuple[str, ...]  # read from the pool (the plan carries uid and the curation columns)
    json_columns: tuple[str, ...]  # written into KEY.json, besides key and uid
    key_width: int


def reshard(source: Path, out: Path, cfg: ReshardConfig = ReshardConfig(), *, pool: Path | None = None,
            session: Session | None = None, workers: int | None = None) -> dict:
    """Write the selection of ``source`` (a run directory or a subset .npy) as tar shards into ``out``
    (on ``session``'s engine; without one, on the local engine with ``workers`` processes)."""
    if session is None:
        with open_session("local", workers=workers) as opened:
            return reshard(source, out, cfg, pool=pool, session=opened)
    return _reshard(Path(source), Path(out), cfg, pool, session)


def _reshard(source: Path, out: Path, cfg: ReshardConfig, pool: Path | None, session: Session) -> dict:
    started = time.perf_counter()
    pool = Path(pool) if pool else pool_of_run(source)
    shards = scan_shards(pool)
    pool_schema = check_pool_schema(pool, shards, cfg)
    selection, selection_files = load_selection(source)
    curation, curation_files = load_curation(source, pool_schema.names)
    plan, clipped = build_plan(selection, shards, cfg)
    plan = attach_curation(plan, curation)
    pool_json = [f.name for f in pool_schema if f.name not in ("uid", "key", cfg.image_column, cfg.text_column)
                 and json_type(f.type)]
    extra = [FACES] if cfg.blur_faces and FACES not in pool_json else []
    spec = ShardSpec(str(out), cfg, (cfg.image_column, cfg.text_column, *pool_json, *extra),
                     tuple(sorted(pool_json + curation.column_names[1:])), max(9, len(str(plan.num_rows - 1))))
    fingerprint = _fingerprint(cfg, [s.path for s in shards] + index_files(pool) + selection_files + curation_files)
    with directory_lock(out):  # everything above only read; from here on OUT is written
        return _write(plan, shards, spec, fingerprint, clipped, selection, source, pool, session, started)


def _write(plan: pa.Table, shards: list[Shard], spec: ShardSpec, fingerprint: str, clipped: list[str],
           selection: np.ndarray, source: Path, pool: Path, session: Session, started: float) -> dict:
    cfg, out = spec.cfg, Path(spec.out)
    shard_count = math.ceil(plan.num_rows / cfg.shard_size)
    todo = _prepare(out, fingerprint, shard_count)
    unique = len(np.unique(selection))
    fields = dict(stage="reshard", fingerprint=fingerprint, config=asdict(cfg), source=str(source), pool=str(pool),
                  engine=session.engine, samples=plan.num_rows, unique_uids=unique, repeated_samples=plan.num_rows - unique,
                  face_boxes_clipped={"samples": len(clipped), "examples": clipped[:5]})
    write_manifest(out, status="running", **fields)
    log.info("reshard: %d samples into %d shards of %d (%d to write) in %s", plan.num_rows, shard_count,
             cfg.shard_size, len(todo), out)
    remaining = plan.filter(pc.is_in(plan.column(SHARD), pa.array(todo, pa.int64())))
    if todo and session.engine == "spark":
        run_spark(remaining, shards, spec, session.spark)
    elif todo:
        run_local(remaining, shards, spec, session.workers)
    shutil.rmtree(out / WORK, ignore_errors=True)
    return write_manifest(out, status="complete", **fields, **_totals(out, len(todo)),
                          seconds_last_run=round(time.perf_counter() - started, 3))


def check_pool_schema(pool: Path, shards: list[Shard], cfg: ReshardConfig) -> pa.Schema:
    schema = shard_schema(next((s.path for s in shards if s.rows), shards[0].path))
    if cfg.image_column not in schema.names:
        raise ReshardError(f"{pool}: no {cfg.image_column!r} column; reshard needs image bytes (a pool made by "
                           f"`curate ingest`, or a DataComp pool downloaded with img2dataset); it has {schema.names}")
    if cfg.blur_faces and FACES not in schema.names:
        raise ReshardError(f"{pool}: --blur-faces needs a {FACES!r} column (DataComp pools have one)")
    return schema


def pool_of_run(source: Path) -> Path:
    """The pool a run used, from RUN_DIR/_run.json (written by `curate run`)."""
    run_info = source / "_run.json"
    if not run_info.is_file() or "pool" not in read_json(run_info):
        raise ReshardError(f"{source}: no _run.json naming the pool; pass --pool")
    return Path(read_json(run_info)["pool"])


def load_selection(source: Path) -> tuple[np.ndarray, list[Path]]:
    """The selected uid pairs (repeats kept) and the files they came from."""
    npy = source if source.suffix == ".npy" else source / "subset.npy"
    if npy.is_file():
        try:
            pairs = np.load(npy, allow_pickle=False)
        except (ValueError, OSError) as error:  # pickled object arrays, truncated or foreign files
            raise ReshardError(f"{npy}: not a DataComp subset .npy ({error}); it must hold a plain array of "
                               f"dtype u8,u8") from None
        if pairs.dtype != SUBSET_DTYPE:
            raise ReshardError(f"{npy}: dtype {pairs.dtype}; a DataComp subset is exactly np.dtype('u8,u8')")
        return pairs, [npy]
    parts = sorted((source / "subset").glob("part-*.parquet"))
    if not parts:
        raise ReshardError(f"{source}: no subset.npy and no subset/part-*.parquet; run `curate run` or `curate subset`")
    return np.concatenate([uid_pairs(pq.read_table(p, columns=["uid"]).column("uid")) for p in parts]), parts


def build_plan(selection: np.ndarray, shards: list[Shard], cfg: ReshardConfig) -> tuple[pa.Table, list[str]]:
    """One row per output sample: uid, pool shard and row, copy number, sample index, output shard;
    and the uids whose face boxes get clipped."""
    unique, counts = np.unique(selection, return_counts=True)
    if not len(unique):
        raise ReshardError("the selection is empty: nothing to reshard")
    found, pieces, clipped = np.zeros(len(unique), bool), [], []
    for shard in shards:
        table = read_shard(shard.path, ["uid", FACES] if cfg.blur_faces else ["uid"])
        pairs = uid_pairs(table.column("uid"))
        position = np.minimum(np.searchsorted(unique, pairs), len(unique) - 1)
        hit = np.flatnonzero(unique[position] == pairs)
        found[position[hit]] = True
        if cfg.blur_faces:
            clipped += check_face_boxes(table.take(hit), shard.path, hit)
        repeats = counts[position[hit]]
        rows = np.repeat(hit, repeats)
        pieces.append(pa.table({"uid": table.column("uid").take(rows), POOL_SHARD: np.full(len(rows), shard.index, np.int32),
                                POOL_ROW: rows, COPY: np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)}))
    if not found.all():
        missing = pairs_to_uids(unique[~found][:5])
        raise ReshardError(f"{int((~found).sum())} of {len(unique)} selected uids are not in the pool "
                           f"(e.g. {', '.join(missing)}); was the subset made from another pool?")
    plan = pa.concat_tables(pieces)
    if cfg.shuffle:
        plan = plan.take(shuffle_order(plan, cfg.seed))
    sample = np.arange(plan.num_rows, dtype=np.int64)
    return plan.append_column(SAMPLE, pa.array(sample)).append_column(SHARD, pa.array(sample // cfg.shard_size)), clipped


def shuffle_order(plan: pa.Table, seed: int) -> np.ndarray:
    """Sort by a hash of (uid, seed, copy): copies of a uid land independently; ties by uid."""
    copies, keys = plan.column(COPY).to_numpy(), np.empty(plan.num_rows)
    for copy in np.unique(copies):
        mask = copies == copy
        keys[mask] = uid_uniform(plan.column("uid").filter(pa.array(mask)), seed, f"reshard-{copy}")
    pairs = uid_pairs(plan.column("uid"))
    return np.lexsort((copies, pairs["f1"], pairs["f0"], keys))


def _fingerprint(cfg: ReshardConfig, files: list[Path]) -> str:
    return digest({"config": asdict(cfg), "files": [[p.name, file_signature(p)] for p in files]})


def _prepare(out: Path, fingerprint: str, shard_count: int) -> list[int]:
    """Clear an output of other settings or inputs; return the shards still to write."""
    claim(out, MANIFEST, "reshard")
    remove_temporaries(out)
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        log.warning("reshard: %s was written with other settings or inputs; rewriting it", out)
        for path in [*out.glob("*.tar"), *out.glob("*_stats.json")]:
            path.unlink()
    shutil.rmtree(out / WORK, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return [k for k in range(shard_count) if not ((out / f"{k:08d}_stats.json").is_file() and (out / f"{k:08d}.tar").is_file())]


def _totals(out: Path, written: int) -> dict:
    stats = [read_json(p) for p in sorted(out.glob("*_stats.json"))]
    return {"shards": len(stats), "shards_written_last_run": written, "successes": sum(s["successes"] for s in stats),
            "failures": dict(sum((Counter(s["failures"]) for s in stats), Counter())),
            "blurred": sum(s["blurred"] for s in stats), "bytes": sum(s["bytes"] for s in stats)}
