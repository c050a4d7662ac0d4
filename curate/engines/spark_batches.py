"""The functions the Spark engine runs in Spark's Python workers (mapInArrow, applyInArrow): a stage's
fit partials, its apply per batch, and its per-group apply (key every row, then one shuffle).
They are picklable values holding the Stage itself and its config; failures name the stage, the
step and the row (curate.engines.failures.marked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.contract import Stage
from curate.engines.failures import marked
from curate.pool import read_shard, repair_text
from curate.runio import atomic_path


def repaired(table: pa.Table) -> pa.Table:
    """Invalid UTF-8 in a string column replaced by U+FFFD, as the local engine's pool reader does
    (Spark hands parquet strings over unchecked), so both engines see the same text."""
    return repair_text(table, "a Spark batch")


class ShardReader:
    """Turns seed rows (``path``: one pool shard each) into that shard's columns, read by the task with
    pyarrow as the local engine reads them (curate.pool.read_shard: invalid UTF-8 repaired, uids
    checked, tar-kept images read from the tars), one table per shard."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
        for batch in batches:
            for path in batch.column("path").to_pylist():
                yield read_shard(Path(path), self.columns)


def tables(batches: Iterator[pa.RecordBatch], reader: ShardReader | None) -> Iterator[pa.Table]:
    """A task's input tables: Spark's Arrow batches (repaired), or with ``reader`` the shards its seeds name."""
    if reader is not None:
        yield from reader(batches)
        return
    for batch in batches:
        yield repaired(pa.Table.from_batches([batch]))


class BatchPartial:
    """mapInArrow function: pass ``number``'s partial of every batch (a picklable value); ``reader``: the
    batches are shard seeds (ShardReader)."""

    def __init__(self, stage: Stage, cfg: Any, number: int, previous: pa.Table | None, reader: ShardReader | None = None):
        self.stage, self.cfg, self.number, self.previous, self.reader = stage, cfg, number, previous, reader

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for table in tables(batches, self.reader):
            try:
                result = self.stage.checked_partial(self.number, table, self.cfg, self.previous)
            except Exception as error:
                raise marked(self.stage.name, f"fit pass {self.stage.fit.passes[self.number].name}", table, error) from None
            yield from result.to_batches()


class BatchApply:
    """mapInArrow function: the stage's apply on every batch; ``reader``: the batches are shard seeds."""

    def __init__(self, stage: Stage, cfg: Any, artifact: pa.Table | None, reader: ShardReader | None = None):
        self.stage, self.cfg, self.artifact, self.reader = stage, cfg, artifact, reader

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for table in tables(batches, self.reader):
            yield from self.apply(table).to_batches()

    def apply(self, table: pa.Table, step: str = "apply") -> pa.Table:
        try:
            return self.stage.checked_apply(table, self.cfg, self.artifact)
        except Exception as error:
            raise marked(self.stage.name, step, table, error) from None


class BatchKey(BatchApply):
    """mapInArrow function: each row's group key appended as GROUP_KEY, and LOOSE: whether the row
    belongs to no group (a null key). A loose row is keyed by its input batch instead (task partition
    and batch number), so the loose rows of one batch form one group of their own: apply sees them as
    it would any batch, and every row goes through the same single shuffle."""

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
        for number, batch in enumerate(batches):
            table = repaired(pa.Table.from_batches([batch]))
            try:
                key = self.stage.group_by(self.stage.input_columns(table, self.cfg), self.cfg, self.artifact)
            except Exception as error:
                raise marked(self.stage.name, "group_by", table, error) from None
            key = pa.chunked_array([key]).cast(pa.int64())
            loose = pc.is_null(key)
            key = pc.fill_null(key, (partition << 32) + number)
            yield from table.append_column(GROUP_KEY, key).append_column(LOOSE, loose).to_batches()


def group_apply(stage: Stage, cfg: Any, artifact: pa.Table | None):
    """applyInArrow function: the stage's apply on one group's rows (or one batch's loose rows). A plain
    function (cloudpickle ships it with its closure): Spark reads its signature and type hints to
    choose how to call it."""
    batch = BatchApply(stage, cfg, artifact)

    def apply_group(table: pa.Table) -> pa.Table:
        loose = table.num_rows > 0 and table.column(LOOSE)[0].as_py()
        return batch.apply(table.drop_columns([GROUP_KEY, LOOSE]), "apply" if loose else "apply to a group")

    return apply_group


GROUP_KEY, LOOSE = "_group", "_loose"


class BatchWrite(BatchApply):
    """mapInArrow function: the stage's apply on every batch of a task, written by the task itself (pyarrow,
    as the local engine writes) into one parquet file in ``directory``, named by partition, attempt and a
    random suffix, so a retried or speculative attempt never touches another's file; yields one row per
    file (its name and rows). The driver moves only the files its job's successful tasks reported
    (``spark.write_task_parts``): the output rows never go back through the JVM."""

    def __init__(self, stage: Stage, cfg: Any, artifact: pa.Table | None, directory: str,
                 reader: ShardReader | None = None):
        super().__init__(stage, cfg, artifact, reader)
        self.directory = directory

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import itertools
        import uuid

        from pyspark import TaskContext

        inputs = tables(batches, self.reader)
        first = next(inputs, None)
        if first is None:  # an empty task writes no file
            return
        context = TaskContext.get()
        partition, attempt = (context.partitionId(), context.attemptNumber()) if context is not None else (0, 0)
        name = f"part-{partition:05d}-{attempt}-{uuid.uuid4().hex[:12]}.parquet"
        schema, rows = self.stage.output_schema(), 0
        with atomic_path(Path(self.directory) / name) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in itertools.chain([first], inputs):
                output = self.apply(table).select(schema.names).cast(schema)
                writer.write_table(output)
                rows += output.num_rows
        yield pa.RecordBatch.from_pydict({"file": [name], "rows": [rows]}, schema=WRITTEN)


WRITTEN = pa.schema([("file", pa.string()), ("rows", pa.int64())])
