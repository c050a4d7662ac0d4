"""Writing one webdataset shard (KEY.jpg, KEY.txt, KEY.json per sample, deterministic bytes), what
goes into KEY.json (the curation columns of a run's subset), and the face boxes of DataComp pools:
checked before anything is written, blurred while writing.

Used by `curate reshard` (curate/reshard.py) on both engines: given the shard's rows in sample
order it writes ``{:08d}.tar`` and ``{:08d}_stats.json`` atomically. The tar is what Python's tarfile
writes in ustar format for members with default headers (mtime 0, uid/gid 0, no owner names, mode
0644), built directly (tarfile's header code cost more than everything else), and JSON has sorted
keys, so the same rows give the same bytes whichever process or engine writes them.

Face blurring follows img2dataset's ``BoundingBoxBlurrer`` (used by DataComp's resharder; after
princetonvisualai/imagenet-face-obfuscation), with PIL: each box [x0, y0, x1, y1] (relative, clipped
to 0..1) is grown by 10% of its longer side in pixels, the union is a mask, the image and the mask are
Gaussian-blurred with sigma = 0.1 x the longest box side, and the blurred image is blended in
through the blurred mask. The result is re-encoded as JPEG. Boxes that are not 4 finite numbers
with x0 <= x1, y0 <= y1 are errors; coordinates outside 0..1 are clipped (curate/reshard.py says why).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import ReshardError
from curate.runio import atomic_path, atomic_write_json
from curate.tarfiles import end_of_archive, member_bytes
from curate.uid import uid_pairs

log = logging.getLogger(__name__)

FACES = "face_bboxes"
MAX_PIXELS = 50_000_000  # images above this are not decoded for blurring (curate.stages.embed's bomb guard)


def write_shard(rows: pa.Table, shard: int, spec: Any, sample_column: str) -> dict:
    """Write ``rows`` (sorted by ``sample_column``) as shard ``shard`` of ``spec.out``; its stats."""
    cfg, out = spec.cfg, Path(spec.out)
    columns = {name: rows.column(name).to_pylist()
               for name in {sample_column, "uid", cfg.image_column, cfg.text_column, *spec.json_columns,
                            *([FACES] if cfg.blur_faces else [])}}
    stats: dict[str, Any] = {"shard": shard, "count": rows.num_rows, "successes": 0, "failures": {}, "failed_uids": [],
                             "blurred": 0, "bytes": 0, "uids": []}
    path = out / f"{shard:08d}.tar"
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as archive:
        for index in range(rows.num_rows):
            image, reason = _image(columns, index, cfg)
            uid = columns["uid"][index]
            if reason:
                stats["failures"][reason] = stats["failures"].get(reason, 0) + 1
                stats["failed_uids"].append(uid)
                continue
            key = f"{columns[sample_column][index]:0{spec.key_width}d}"
            meta = {"key": key, "uid": uid, **{name: json_value(columns[name][index]) for name in spec.json_columns}}
            text = columns[cfg.text_column][index] or ""
            for suffix, data in (("jpg", image), ("txt", text.encode("utf-8", "surrogatepass")),
                                 ("json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())):
                archive.write(member_bytes(f"{key}.{suffix}", data))
            stats["successes"] += 1
            stats["blurred"] += image is not columns[cfg.image_column][index]
            stats["uids"].append(uid)
        archive.write(end_of_archive(archive.tell()))
    stats["bytes"] = path.stat().st_size
    atomic_write_json(stats, out / f"{shard:08d}_stats.json")
    return stats


def _image(columns: dict[str, list], index: int, cfg: Any) -> tuple[bytes | None, str | None]:
    data = columns[cfg.image_column][index]
    if data is None:
        return None, "no_image"
    boxes = columns[FACES][index] if cfg.blur_faces else None
    if not boxes:
        return data, None
    blurred = blur_faces(data, boxes, cfg.jpeg_quality)
    return (blurred, None) if blurred is not None else (None, "undecodable_image")


def load_curation(source: Path, pool_columns: list[str]) -> tuple[pa.Table, list[Path]]:
    """uid and the subset's JSON-able columns the pool does not have (the stages' columns)."""
    parts = sorted((source / "subset").glob("part-*.parquet")) if source.is_dir() else []
    if not parts:
        return pa.table({"uid": pa.array([], pa.string())}), []
    names = [f.name for f in pq.read_schema(parts[0]) if f.name not in pool_columns and json_type(f.type)]
    tables = [pq.read_table(p, columns=["uid", *names]) for p in parts]
    return pa.concat_tables(tables, promote_options="permissive"), parts




def attach_curation(plan: pa.Table, curation: pa.Table) -> pa.Table:
    """Append the curation columns to every plan row by uid (null where the subset lacks it)."""
    if curation.num_columns == 1:
        return plan
    keys = uid_pairs(curation.column("uid"))
    order = np.argsort(keys, order=["f0", "f1"])
    wanted = uid_pairs(plan.column("uid"))
    position = np.minimum(np.searchsorted(keys[order], wanted), len(order) - 1)
    index = pa.array(order[position], mask=keys[order][position] != wanted)
    for name in curation.column_names[1:]:
        plan = plan.append_column(curation.schema.field(name), curation.column(name).take(index))
    return plan




def json_type(data_type: pa.DataType) -> bool:
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        return json_type(data_type.value_type)
    return any(check(data_type) for check in (pa.types.is_boolean, pa.types.is_integer, pa.types.is_float32,
                                             pa.types.is_float64, pa.types.is_string, pa.types.is_large_string))




def json_value(value: Any) -> Any:
    """JSON has no NaN or infinity: null instead (in lists too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def check_face_boxes(table: pa.Table, path: Path, rows: np.ndarray) -> list[str]:
    """Stop on a malformed box (naming the uid); warn about coordinates outside 0..1 (clipped when
    blurring) and return those uids."""
    boxes = table.column(FACES).combine_chunks()
    if not (pa.types.is_list(boxes.type) or pa.types.is_large_list(boxes.type)):
        raise ReshardError(f"{path}: {FACES} is {boxes.type}; need a list of [x0, y0, x1, y1]")
    flat = pc.list_flatten(boxes)
    owner = pc.list_parent_indices(boxes).to_numpy()
    lengths = pc.fill_null(pc.list_value_length(flat), -1).to_numpy() if len(flat) else np.zeros(0, int)
    coords = np.full((len(flat), 4), np.nan)
    good_length = lengths == 4
    if good_length.any():
        coords[good_length] = pc.list_flatten(flat.filter(pa.array(good_length))).to_numpy(zero_copy_only=False).reshape(-1, 4)
    bad = ~np.isfinite(coords).all(axis=1) | (coords[:, 2] < coords[:, 0]) | (coords[:, 3] < coords[:, 1])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ReshardError(f"{path} row {rows[owner[first]]}: uid {table.column('uid')[owner[first]]} has a malformed face "
                           f"box {flat[first].as_py()} (need [x0, y0, x1, y1], x0 <= x1, y0 <= y1); {int(bad.sum())} such box(es)")
    outside = np.unique(owner[((coords < 0) | (coords > 1)).any(axis=1)])
    if len(outside):
        log.warning("%s: %d sample(s) have face boxes outside 0..1, clipped to the image (e.g. uid %s)",
                    path, len(outside), table.column("uid")[outside[0]])
    return table.column("uid").take(outside).to_pylist()




def blur_faces(data: bytes, boxes: list, quality: int) -> bytes | None:
    """The image with its face boxes blurred, as JPEG bytes; None if it cannot be decoded."""
    from PIL import Image, ImageDraw, ImageFilter

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            return None
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image = image if image.mode in ("RGB", "L") else image.convert("RGB")
    width, height = image.size
    mask, longest = Image.new("L", image.size, 0), 0
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in np.clip(np.asarray(boxes, dtype=np.float64), 0.0, 1.0):
        box = [int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)]
        side = max(box[2] - box[0], box[3] - box[1])
        longest = max(longest, side)
        grown = [max(0, int(box[0] - 0.1 * side)), max(0, int(box[1] - 0.1 * side)),
                 min(width, int(box[2] + 0.1 * side)), min(height, int(box[3] + 0.1 * side))]
        if grown[2] > grown[0] and grown[3] > grown[1]:
            draw.rectangle([grown[0], grown[1], grown[2] - 1, grown[3] - 1], fill=255)
    radius = max(1.0, 0.1 * longest)
    blended = Image.composite(image.filter(ImageFilter.GaussianBlur(radius)), image, mask.filter(ImageFilter.GaussianBlur(radius)))
    buffer = io.BytesIO()
    blended.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
