"""A small finished run for the report and notebook tests: a generated DataComp-format pool (with
tiny JPEGs, one corrupt and one failed download, unless ``images`` is False) through basic,
laion2b, align, metaclip, score, cluster, semdedup and dbp, the subset and report.json."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate import pipeline
from curate.steps.datacomp import import_datacomp
from curate.recipe import parse_recipe
from curate.demo.synthetic import write_datacomp_pool

RECIPE = {
    "seed": 0,
    "stages": {
        "basic": {},
        "laion2b": {},  # the pool's clip_b32_similarity_score >= 0.28
        "align": {},
        "metaclip": {"t": 20},
        "score": {"score_column": "clip_b32_similarity_score", "fraction": 0.5},
        "cluster": {"clusters": 4},
        "semdedup": {"eps": 0.62},
        "dbp": {"keep_fraction": 0.5, "clusters": 3, "neighbours": 2},
    },
    "select": "status = 'success' AND basic_keep AND score_keep AND dbp_keep",
}


def jpeg(index: int) -> bytes:
    """A 160 x 120 JPEG of a colour that depends on the row (the report downscales it)."""
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)).save(buffer, "JPEG")
    return buffer.getvalue()


def add_images(parquet: Path, first_shard: bool) -> None:
    """jpg and status columns; in the first shard row 0 is a failed download, row 1 corrupt bytes."""
    table = pq.read_table(parquet)
    images = [jpeg(i) for i in range(table.num_rows)]
    status = ["success"] * table.num_rows
    if first_shard:
        images[0], status[0], images[1] = None, "failed_to_download", b"not a jpeg"
    table = table.append_column("jpg", pa.array(images, pa.binary())).append_column("status", pa.array(status))
    pq.write_table(table, parquet)


def make_small_run(work: Path, *, images: bool = True, rows_per_shard: int = 150) -> Path:
    """Write the pool under work/pool and the run under work/run; return the run directory."""
    src = write_datacomp_pool(work / "src", shards=2, rows_per_shard=rows_per_shard, seed=11, models=("b32",))
    if images:
        for index, parquet in enumerate(sorted(src.glob("*.parquet"))):
            add_images(parquet, index == 0)
    import_datacomp(src, work / "pool")
    recipe = RECIPE if images else {**RECIPE, "select": RECIPE["select"].replace("status = 'success' AND ", "")}
    recipe = parse_recipe(recipe, "small")
    pipeline.run_recipe(recipe, work / "pool", work / "run", workers=1)
    return work / "run"
