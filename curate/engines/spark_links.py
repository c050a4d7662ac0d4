"""Spark's reader of an embedding sidecar linked to npz files (curate.npzlinks): one task per part
maps its arrays in place and yields uid plus the embedding columns, as spark.read.parquet would
give them from a copied sidecar (fixed_size_binary arrives in Spark as binary either way)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from curate import npzlinks
from curate.runio import read_manifest


class LinkedParts:
    """mapInArrow function: part names in, the parts' uid and embedding columns out."""

    def __init__(self, directory: Path, names: list[str]):
        self.directory, self.names = directory, names

    def schema(self) -> pa.Schema:
        return pa.schema([("uid", pa.string()), *[(name, pa.binary()) for name in self.names]])

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for part in batch.column("part").to_pylist():
                table = npzlinks.read_part(self.directory, part, ["uid", *self.names]).cast(self.schema())
                yield from table.to_batches(max_chunksize=65536)


def read_linked(spark, directory: Path):
    """The sidecar's rows as a DataFrame (uid, image_emb, text_emb)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    parts = npzlinks.part_names(directory)
    reader = LinkedParts(directory, read_manifest(directory)["columns"])
    seeds = spark.createDataFrame([(part,) for part in parts], "part string").repartition(max(1, len(parts)))
    return seeds.mapInArrow(reader, from_arrow_schema(reader.schema()))
