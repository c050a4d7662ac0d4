"""Shared fixtures: tiny generated pools in tmp_path, and one Spark session per test run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.uid import derive_uid

CAPTIONS = [
    "a photo of a red star on a striped background",
    "the blue circle sits in the corner of the frame",
    "ein roter Stern auf einem gestreiften Hintergrund im Bild",
    "image",
    "Click here to enlarge this photo",
    "two green squares next to each other on the grass",
    "tiny",
    "a small yellow house under a tree in summer",
]

UNIQUE = {0, 1, 5, 7}  # these captions get a number: unique; the others repeat


def make_rows(n: int, offset: int = 0) -> dict[str, list]:
    """Hand-checkable rows: caption i % 8 (numbered when in UNIQUE), sizes cycling i % 6."""
    sizes = [(640, 480), (150, 300), (900, 250), (300, 300), (200, 600), (None, None)]
    rows = {"uid": [], "url": [], "text": [], "original_width": [], "original_height": [], "status": []}
    for i in range(offset, offset + n):
        url = f"http://example.invalid/{i}.jpg"
        text = CAPTIONS[i % len(CAPTIONS)]
        if i % len(CAPTIONS) in UNIQUE:
            text += f" number {i}"
        width, height = sizes[i % len(sizes)]
        rows["uid"].append(derive_uid(url, text))
        rows["url"].append(url)
        rows["text"].append(text)
        rows["original_width"].append(width)
        rows["original_height"].append(height)
        rows["status"].append("success" if width else "failed_to_download")
    return rows


def write_pool(directory: Path, shard_sizes: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    offset = 0
    for index, size in enumerate(shard_sizes):
        table = pa.table(make_rows(size, offset), schema=pa.schema([
            ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
            ("original_width", pa.int64()), ("original_height", pa.int64()), ("status", pa.string())]))
        pq.write_table(table, directory / f"{index:05d}.parquet")
        offset += size
    return directory


@pytest.fixture
def tiny_pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool", [40, 0, 35, 25])


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from curate.engines.spark import get_spark

    session = get_spark("local[2]", app="curate-tests")
    yield session
    session.stop()
