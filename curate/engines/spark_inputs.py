"""The Spark engine's input frames: the pool's columns (images kept in tar shards read by the tasks
themselves), a stage's or sidecar's parts, and a stage's input columns joined by uid."""

from __future__ import annotations

from pathlib import Path

from curate import npzlinks, tarindex
from curate.engines import plan as planning
from curate.engines.spark_images import with_tar_images
from curate.engines.spark_links import read_linked
from curate.pool import Shard


def read_pool(spark, shards: list[Shard], columns: list[str] | None = None):
    """The pool's columns; an image column kept in tar shards (curate.tarindex) is read by each task
    from the tars after a join of the index's locations (``with_tar_images``)."""
    frame = spark.read.parquet(*[str(s.path) for s in shards])
    virtual = tarindex.image_column(shards[0].path.parent)
    if virtual is None or virtual in frame.columns or (columns is not None and virtual not in columns):
        return frame.select(*columns) if columns is not None else frame
    wanted = columns or [*frame.columns, virtual]
    names = [c for c in wanted if c != virtual]
    return with_tar_images(spark, frame.select(*dict.fromkeys(["uid", *names])), shards).select(*wanted)


def read_parts(spark, directory: Path):
    """A stage's or sidecar's data files only (part-*.parquet), not artifacts beside them; a sidecar
    linked to npz files (curate.npzlinks) is read from them in place."""
    if npzlinks.links(directory):
        return read_linked(spark, directory)
    return spark.read.parquet(*[str(p) for p in sorted(directory.glob("part-*.parquet"))])


def joins(plan: planning.Plan, shards: list[Shard]) -> bool:
    """Whether the stage's input frame is a join by uid (a shuffle each time it is computed)."""
    upstream = [name for name in plan.sources if name != planning.POOL]
    if plan.sources[planning.POOL] == ["uid"]:
        return len(upstream) > 1
    return bool(upstream) or tarindex.image_column(shards[0].path.parent) in plan.sources[planning.POOL]


def input_frame(spark, plan: planning.Plan, shards: list[Shard], out_dir: Path):
    """The stage's input columns by uid. A stage that reads nothing of the pool but uid starts from
    an earlier output or sidecar (each has exactly the pool's uids; ``_run`` checks the row count
    written) and joins the others to it: one join fewer, none for a single source."""
    upstream = [name for name in plan.sources if name != planning.POOL]
    if plan.sources[planning.POOL] == ["uid"] and upstream:
        frames = [read_parts(spark, plan.source_dirs[name]).select("uid", *plan.sources[name]) for name in upstream]
    else:
        frames = [read_pool(spark, shards, plan.sources[planning.POOL])]
        frames += [read_parts(spark, plan.source_dirs[name]).select("uid", *plan.sources[name]) for name in upstream]
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.join(other, on="uid", how="left")
    return frame
