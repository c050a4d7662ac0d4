"""Import a DataComp pool as released (Gadre et al. 2023, mlfoundations/datacomp) into a pool.

A released shard is `<name>.parquet` (uid, url, text, original_width, original_height,
clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256) plus a sibling
`<name>.npz` whose arrays b32_img, b32_txt (n x 512) and l14_img, l14_txt (n x 768) are
float16, L2-normalised and row-aligned with the parquet (DESIGN.md section 2).

`src` is either that directory or DataComp's whole download directory (``download_upstream.py``'s
output): ``metadata/`` with the parquet + npz pairs and ``shards/`` with img2dataset's webdataset tars
(KEY.jpg, KEY.txt, KEY.json) and a parquet per tar (uid, key, status of every row it was given). The
images stay in those tars: the pool gets an index linking each uid to its member (curate.tarindex,
``out/images/``), so stages that read ``jpg`` (embed, reshard, train-dfn) read them in place.

The import writes `out/<name>.parquet` with every metadata column (uids validated) and, per
model found in the npz, a row-aligned embedding sidecar `out/embeddings/<b32|l14>/part-NNNNN.parquet`
(NNNNN = the shard's index) with `uid`, `image_emb`, `text_emb` in curate.kernels.embeddings' float16
format (the npz bits, unchanged), described by `out/embeddings/<model>/_manifest.json`, so
stages read them like embeddings computed by `curate embed`. With ``link_embeddings`` the sidecar
instead links each npz's arrays, read in place (curate.npzlinks): the import adds the metadata
only. Every npz is checked from its array
headers before anything is written (missing npz, row counts, dimensions, models present in
some shards only), so a bad pool fails at once with a message naming the files. Work then
streams shard by shard (memory bounded by one shard), each file written atomically, with a
completion marker per shard so a re-run skips what is finished; the pool's uids are
checked unique at the end.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.errors import PoolError, RunDirError
from curate.fingerprint import file_signature
from curate.kernels.embeddings import EMBEDDINGS_DIR, encode
from curate.npzlinks import link_entry, write_links
from curate.outputs import claim, directory_lock
from curate.pool import POOL_INFO, check_unique_uids, list_shards, parquet_file, pool_info, read_shard, scan_shards
from curate.progress import Progress
from curate.runio import (
    MARKER_DIR,
    atomic_write_json,
    atomic_write_table,
    is_done,
    mark_done,
    read_json,
    write_manifest,
)
from curate.tarindex import INDEX_DIR, build_index

log = logging.getLogger(__name__)

# npz prefix: (open_clip model name, pretrained tag, embedding width)
MODELS = {"b32": ("ViT-B-32", "openai", 512), "l14": ("ViT-L-14", "openai", 768)}


def import_datacomp(src: Path, out: Path, *, overwrite: bool = False, link_embeddings: bool = False) -> dict:
    """Import every `<name>.parquet` + `<name>.npz` pair of `src` into the pool `out`
    (``link_embeddings``: read the npz arrays in place instead of copying them).

    An identical earlier import (same source files, by signature) is kept; an unfinished one is
    resumed; an import of other files is replaced only with ``overwrite``; a folder of files curate
    did not write is refused."""
    src, out = Path(src), Path(out)
    metadata, tars = download_layout(src)
    with directory_lock(out):
        parquets = list_shards(metadata)
        models = check_npz_files(parquets)
        source = {p.name: [file_signature(p), file_signature(p.with_suffix(".npz")), link_embeddings] for p in parquets}
        info = pool_info(out) if out.is_dir() else None
        if info and info.get("status") == "complete" and info.get("source_files") == source and \
                info.get("tar_shards", 0) == len(tars):
            scan_shards(out)  # still the shards it wrote; re-indexes tars that changed
            log.info("%s already holds the import of %s: skipping", out, src)
            return info
        prepare_import(out, info, source, overwrite)
        begin = {"status": "writing", "command": "import-datacomp", "source": str(src.resolve()), "format": "datacomp",
                 "source_files": source}
        atomic_write_json(begin, out / POOL_INFO)
        rows = import_shards(parquets, out, models, source, link_embeddings)
        check_unique_uids(out)
        write_sidecar_manifests(out, models, src, len(parquets), rows, parquets if link_embeddings else None)
        images = link_images(out, tars)
        info = {**begin, "status": "complete", "rows": rows, "shards": len(parquets),
                "shard_files": {shard.path.name: shard.rows for shard in scan_shards(out, complete=False)},
                "tar_shards": len(tars), "images_linked": images,
                "embeddings": {model: {"model": MODELS[model][0], "pretrained": MODELS[model][1],
                                       "dim": MODELS[model][2], "path": f"{EMBEDDINGS_DIR}/{model}"}
                               for model in models}}
        atomic_write_json(info, out / POOL_INFO)
    log.info("imported %d DataComp samples in %d shard(s) with embeddings %s and %d linked image(s) into %s",
             rows, len(parquets), list(models), info["images_linked"], out)
    return info


def download_layout(src: Path) -> tuple[Path, list[Path]]:
    """(the metadata directory, the image tars) of ``src``: DataComp's download directory (``metadata/``
    with parquet + npz, ``shards/`` with img2dataset's tars and their parquets), or a metadata
    directory alone (no tars)."""
    if not (src / "metadata").is_dir():
        return src, []
    tars = sorted((src / "shards").glob("*.tar")) if (src / "shards").is_dir() else []
    for tar in tars:
        if not tar.with_suffix(".parquet").is_file():
            raise PoolError(f"{tar}: no {tar.with_suffix('.parquet').name} beside it; img2dataset writes one per "
                            f"tar (with uid and key), and the images are linked to the pool through it")
    if (src / "shards").is_dir() and not tars:
        log.warning("%s/shards holds no .tar: importing the metadata and embeddings only", src)
    return src / "metadata", tars


def link_images(out: Path, tars: list[Path]) -> int:
    """Index the download's tars for the pool by uid (curate.tarindex), the images staying where they are."""
    shutil.rmtree(out / INDEX_DIR, ignore_errors=True)
    if not tars:
        return 0
    shards = [shard.path for shard in scan_shards(out, complete=False)]
    return build_index(out, [(tar, tar.with_suffix(".parquet")) for tar in tars], shards, origin="datacomp")["images"]


def prepare_import(out: Path, info: dict | None, source: dict, overwrite: bool) -> None:
    claim(out, POOL_INFO, "pool")
    if info is None or info.get("source_files") == source:
        return  # a new pool, or an unfinished import of the same files: resume it
    if info.get("status") == "complete" and not overwrite:
        raise RunDirError(f"{out}: holds an import of {info.get('source')} made from other files (they changed, "
                          f"or another source); pass --overwrite to replace it")
    for name in info.get("shard_files") or info.get("source_files") or {}:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / EMBEDDINGS_DIR, ignore_errors=True)
    shutil.rmtree(out / MARKER_DIR, ignore_errors=True)


def import_shards(parquets: list[Path], out: Path, models: list[str], source: dict, link: bool = False) -> int:
    rows = 0
    with Progress("import datacomp", len(parquets), "shard") as progress:
        for index, parquet in enumerate(parquets):
            marker = out / MARKER_DIR / f"{parquet.stem}.json"
            same_source = marker.is_file() and read_json(marker).get("source") == source[parquet.name]
            if same_source and is_done(out, parquet.stem, out / parquet.name):
                rows += parquet_file(out / parquet.name).metadata.num_rows
            else:
                rows += import_shard(parquet, out, models, f"part-{index:05d}", link)
                mark_done(out, parquet.stem, {"shard": parquet.name, "models": models, "source": source[parquet.name]},
                          out / parquet.name)
            progress.update()
    return rows


def write_sidecar_manifests(out: Path, models: list[str], src: Path, shards: int, rows: int,
                            linked: list[Path] | None = None) -> None:
    """Each model's sidecar manifest, and with ``linked`` (the source parquets) its ``_links.json``
    for the parts not copied."""
    for model in models:
        name, pretrained, dim = MODELS[model]
        if linked is not None:
            sidecar = out / EMBEDDINGS_DIR / model
            entries = {f"part-{index:05d}": link_entry(parquet.with_suffix(".npz"), model, out / parquet.name)
                       for index, parquet in enumerate(linked)
                       if not (sidecar / f"part-{index:05d}.parquet").is_file()}
            write_links(sidecar, entries)
        write_manifest(out / EMBEDDINGS_DIR / model, stage="embed", status="complete", layout="pool-shards",
                       columns=["image_emb", "text_emb"], fingerprint=f"datacomp-npz-{model}-{rows}",
                       model=name, pretrained=pretrained, weights="tag", dim=dim, preprocess="datacomp release",
                       source="datacomp npz", src=str(src.resolve()), shards=shards, rows=rows)


def check_npz_files(parquets: list[Path]) -> list[str]:
    """Check each npz against its parquet from headers only; return the models all shards have."""
    models_seen: dict[tuple[str, ...], Path] = {}
    for parquet in parquets:
        npz = parquet.with_suffix(".npz")
        if not npz.is_file():
            raise PoolError(f"{parquet}: no embeddings file {npz.name} next to it")
        rows = parquet_file(parquet).metadata.num_rows
        shapes = npz_shapes(npz)
        models = tuple(model for model in MODELS if f"{model}_img" in shapes or f"{model}_txt" in shapes)
        for model in models:
            check_model_arrays(shapes, model, npz, parquet, rows)
        models_seen.setdefault(models, npz)
    if len(models_seen) > 1:
        described = "; ".join(f"{path} has {list(models) or 'none'}" for models, path in models_seen.items())
        raise PoolError(f"shards disagree on which embeddings they carry: {described}")
    return list(next(iter(models_seen)))


def check_model_arrays(shapes: dict[str, tuple], model: str, npz: Path, parquet: Path, rows: int) -> None:
    dim = MODELS[model][2]
    for kind in ("img", "txt"):
        key = f"{model}_{kind}"
        if key not in shapes:
            raise PoolError(f"{npz}: has {model} arrays but no {key}")
        shape, dtype = shapes[key]
        if len(shape) != 2 or shape[1] != dim:
            raise PoolError(f"{npz}: {key} has shape {shape}, expected (rows, {dim}) for {MODELS[model][0]}")
        if shape[0] != rows:
            raise PoolError(f"row counts differ: {npz} {key} has {shape[0]} rows but {parquet} has {rows}")
        if dtype.kind != "f":
            raise PoolError(f"{npz}: {key} has dtype {dtype}, expected float16")


def npz_shapes(npz: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array name -> (shape, dtype) read from the .npy headers inside the npz, not the data."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    result = {}
    try:
        with zipfile.ZipFile(npz) as archive:
            for member in (name for name in archive.namelist() if name.endswith(".npy")):
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version not in readers:
                        raise ValueError(f"unsupported .npy format version {version} in {member}")
                    shape, _, dtype = readers[version](handle)
                result[member.removesuffix(".npy")] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise PoolError(f"{npz}: not a readable npz file ({error})") from error
    return result


def import_shard(parquet: Path, out: Path, models: list[str], part: str, link: bool = False) -> int:
    """Copy one shard's metadata and write its embedding sidecars (``link``: only those whose npz
    arrays cannot be mapped in place); returns its row count."""
    table = read_shard(parquet)
    if "uid" not in table.column_names:
        raise PoolError(f"{parquet}: missing required column 'uid'; it has {table.column_names}")
    npz = parquet.with_suffix(".npz")
    try:
        with np.load(npz) as arrays:
            for model in models:
                if link and link_entry(npz, model, parquet) is not None:
                    (out / EMBEDDINGS_DIR / model / f"{part}.parquet").unlink(missing_ok=True)
                    continue
                if link:
                    log.warning("%s: the %s arrays are compressed or not C-ordered float16: copying them "
                                "(np.savez, DataComp's writer, stores them so they can be read in place)", npz, model)
                image_emb, text_emb = arrays[f"{model}_img"], arrays[f"{model}_txt"]
                warn_non_finite(image_emb, f"{npz} {model}_img")
                warn_non_finite(text_emb, f"{npz} {model}_txt")
                sidecar = embedding_table(table.column("uid"), image_emb, text_emb)
                atomic_write_table(sidecar, out / EMBEDDINGS_DIR / model / f"{part}.parquet")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise PoolError(f"{npz}: cannot read embeddings ({error})") from error
    atomic_write_table(table, out / parquet.name)
    return table.num_rows


def embedding_table(uids: pa.ChunkedArray, image_emb: np.ndarray, text_emb: np.ndarray) -> pa.Table:
    """uid, image_emb, text_emb as float16 sidecar columns (curate.embeddings.encode)."""
    for matrix in (image_emb, text_emb):
        if matrix.dtype != np.float16:
            log.warning("embeddings stored as %s, not float16: converting", matrix.dtype)
    return pa.table({"uid": uids, "image_emb": encode(image_emb), "text_emb": encode(text_emb)})


def warn_non_finite(matrix: np.ndarray, where: str) -> None:
    """NaN or infinite embeddings are kept (a later stage records them) but reported here."""
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        log.warning("%s: %d row(s) with NaN or infinite values, first rows %s", where, len(bad), bad[:10].tolist())
