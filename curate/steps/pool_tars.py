"""Writing a pool shard in either output format of `curate ingest` (and its --retry-failed / --append).

- ``parquet`` (the default): ``NNNNN.parquet`` with the image bytes in its ``jpg`` column.
- ``webdataset``: img2dataset's webdataset layout, ``NNNNN.tar`` beside ``NNNNN.parquet``. The tar
  holds KEY.jpg (the same bytes the parquet format stores), KEY.txt (the caption) and KEY.json (uid,
  url and the sizes, status and sha256) for every row with an image, in the shard's row order; KEY is
  the uid (unique in a pool, no dots: webdataset's key rule). The parquet has every other column and
  every row, failed downloads included. The pool's ``images/`` index (curate.tarindex) links the two;
  ``index_pool`` rebuilds it after shards were written. Tars are written with deterministic bytes
  (curate.tarfiles), so re-ingesting the same list gives the same files.

Tar first, parquet second, each atomically; the pool's ``_pool.json`` says "writing" until the end, so
a half-written shard is never read, and the commands rewrite it on a re-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from curate.errors import RecipeError
from curate.pool import list_shards
from curate.runio import atomic_path, atomic_write_table
from curate.tarfiles import write_tar
from curate.tarindex import beside_sources, build_index, ensure_index

OUTPUT_FORMATS = ("parquet", "webdataset")
IMAGE = "jpg"
JSON_COLUMNS = ("uid", "url", "original_width", "original_height", "width", "height", "status", "sha256")


def check_format(output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise RecipeError(f"ingest: --output-format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    return output_format


def sample_members(shard: pa.Table):
    """(name, bytes) of the tar members of ``shard``'s rows with an image, in row order."""
    columns = {name: shard.column(name).to_pylist() for name in {"text", IMAGE, *JSON_COLUMNS}}
    for row, image in enumerate(columns[IMAGE]):
        if image is None:
            continue
        uid = columns["uid"][row]
        meta = {name: columns[name][row] for name in JSON_COLUMNS}
        yield f"{uid}.jpg", image
        yield f"{uid}.txt", (columns["text"][row] or "").encode("utf-8", "surrogatepass")
        yield f"{uid}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()


def store_shard(shard: pa.Table, path: Path, output_format: str) -> None:
    """Write one pool shard (with its ``jpg`` column) in ``output_format`` at ``path`` (NNNNN.parquet)."""
    if output_format == "webdataset":
        with atomic_path(path.with_suffix(".tar")) as tmp, open(tmp, "wb", buffering=1 << 20) as handle:
            write_tar(handle, sample_members(shard))
        shard = shard.drop_columns([IMAGE])
    atomic_write_table(shard, path)


def index_pool(out: Path) -> dict:
    """Rebuild the tar index of a webdataset pool ingest has just written or changed."""
    shards = list_shards(out)
    return build_index(Path(out), beside_sources(shards), shards)


def fresh_index(out: Path) -> dict | None:
    """The pool's tar index, rebuilt only if a tar or shard changed since it was built (a killed retry)."""
    return ensure_index(Path(out), list_shards(out))
