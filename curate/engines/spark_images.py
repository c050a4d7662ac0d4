"""The Spark engine's reading of images a pool keeps in webdataset tars (curate.tarindex): the index's
locations joined by uid, then a mapInArrow whose tasks read the bytes from the tars themselves (the
pool must be on a filesystem the executors see), so no image goes through a shuffle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from curate import tarindex
from curate.pool import Shard


def with_tar_images(spark, frame, shards: list[Shard]):
    """``frame`` (with uid) plus the pool's tar-kept image column, appended last: the index's locations
    joined by uid, then the bytes read by each task from the tars (no image bytes in a shuffle)."""
    from pyspark.sql.types import BinaryType, StructField, StructType

    pool_dir = shards[0].path.parent
    virtual = tarindex.image_column(pool_dir)
    index = spark.read.parquet(*[str(pool_dir / tarindex.INDEX_DIR / f"{s.path.stem}.parquet") for s in shards])
    located = index.selectExpr("uid", *[f"{name} AS {alias}" for name, alias in
                                        zip(("tar", "offset", "size"), tarindex.LOCATION_COLUMNS)])
    joined = frame.join(located, on="uid", how="left")
    schema = StructType([f for f in joined.schema.fields if f.name not in tarindex.LOCATION_COLUMNS]
                        + [StructField(virtual, BinaryType())])
    return joined.mapInArrow(TarImages(str(pool_dir), virtual), schema)


class TarImages:
    """mapInArrow function: each batch's index locations -> the image bytes, read from the tars."""

    def __init__(self, pool_dir: str, column: str):
        self.pool_dir, self.column = pool_dir, column

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            locations = table.select(list(tarindex.LOCATION_COLUMNS)).rename_columns(["tar", "offset", "size"])
            images = tarindex.images_of(Path(self.pool_dir), locations)
            table = table.drop_columns(list(tarindex.LOCATION_COLUMNS))
            yield from table.append_column(pa.field(self.column, pa.binary()), images).to_batches()
