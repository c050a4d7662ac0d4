"""`curate ingest`, `import-datacomp`, `demo-pool`, `train-dfn`: making pools and models."""

from __future__ import annotations

import argparse
import json
from typing import Any

from curate.commands.base import Command, arg, path_arg


def run_ingest(args: argparse.Namespace) -> None:
    from curate.errors import RecipeError
    from curate.steps import ingest_more
    from curate.steps.ingest import download_options, ingest

    if args.retry_failed or args.append:
        options = download_options(args.processes, args.threads, args.resize_mode, args.image_size, args.timeout,
                                   args.retries)
        if args.retry_failed == bool(args.url_list) or (args.append and not args.url_list):
            raise RecipeError("ingest: --retry-failed takes no URL list; --append needs one")
        result = (ingest_more.retry_failed(args.out, options, args.retry_all) if args.retry_failed else
                  ingest_more.append(args.url_list, args.out, options, args.url_col, args.caption_col))
        print(json.dumps({k: result[k] for k in ("rows", "status_counts", "history")}, indent=2, default=str))
        return
    if args.url_list is None:
        raise RecipeError("ingest: name a URL list (or pass --retry-failed)")
    result = ingest(args.url_list, args.out, url_col=args.url_col, caption_col=args.caption_col,
                    processes=args.processes, threads=args.threads, resize_mode=args.resize_mode,
                    image_size=args.image_size, timeout=args.timeout, retries=args.retries, shard_size=args.shard_size,
                    overwrite=args.overwrite, output_format=args.output_format)
    print(json.dumps(result, indent=2, default=str))


def run_import(args: argparse.Namespace) -> None:
    from curate.steps.datacomp import import_datacomp

    print(json.dumps(import_datacomp(args.src, args.out, overwrite=args.overwrite, link_embeddings=args.link_embeddings),
                     indent=2, default=str))


def run_demo_pool(args: argparse.Namespace) -> None:
    from curate.demo.pool import make_demo_pool

    print(json.dumps(make_demo_pool(args.out, n=args.n, seed=args.seed), indent=2, default=str))


def run_train_dfn(args: argparse.Namespace) -> None:
    from curate.steps.train_dfn import TrainSettings, train_dfn

    settings = TrainSettings(model=args.model, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, device=args.device)
    info = train_dfn(args.trusted, args.out, settings)
    print(json.dumps({key: info[key] for key in ("model", "samples", "skipped", "final_loss", "seconds")}, indent=2))


def _train_defaults() -> dict[str, Any]:
    from curate.steps.train_dfn import TrainSettings

    return {"epochs": TrainSettings.epochs, "batch_size": TrainSettings.batch_size, "lr": TrainSettings.lr}


def pool_commands() -> dict[str, Command]:
    train = _train_defaults()
    return {
        "ingest": Command("download a URL list with img2dataset into a parquet pool", (
            arg("url_list", type=path_arg, nargs="?", help="parquet, csv or tsv with url and caption columns"),
            arg("--out", type=path_arg, required=True, help="pool directory to write"),
            arg("--url-col", default="url"), arg("--caption-col", default="caption"),
            arg("--processes", type=int, default=2), arg("--threads", type=int, default=16),
            arg("--resize-mode", default="no", help="img2dataset resize mode; 'no' keeps original bytes"),
            arg("--image-size", type=int, default=512),
            arg("--timeout", type=float, default=10.0, help="seconds per download"),
            arg("--retries", type=int, default=0),
            arg("--shard-size", type=int, default=None,
                help="samples per pool shard (default: about 4 shards per core, 256 to 10,000)"),
            arg("--overwrite", action="store_true", help="replace a pool curate wrote there from another URL list"),
            arg("--output-format", choices=("parquet", "webdataset"), default="parquet",
                help="parquet: image bytes in the shards' jpg column; webdataset: img2dataset's layout, NNNNN.tar "
                     "(KEY.jpg/.txt/.json) beside each NNNNN.parquet, read in place through POOL/images/ (an index "
                     "of member offsets); --retry-failed and --append keep the pool's format"),
            arg("--retry-failed", action="store_true", help="download again, in place, the rows of the pool --out "
                "that failed with a transient error (not HTTP 4xx other than 408/429, not a hash mismatch)"),
            arg("--retry-all", action="store_true", help="with --retry-failed: every failed download"),
            arg("--append", action="store_true", help="add URL_LIST to the pool --out as new shards (uids must be new)")),
            run_ingest),
        "import-datacomp": Command("import a DataComp pool (parquet + npz) with its embeddings",
                                   (arg("--src", type=path_arg, required=True), arg("--out", type=path_arg, required=True),
                                    arg("--overwrite", action="store_true",
                                        help="replace an import of other source files"),
                                    arg("--link-embeddings", action="store_true",
                                        help="read the npz embeddings in place (memory-mapped) instead of copying "
                                             "them into the pool: the import adds only the metadata; the npz files "
                                             "must stay where they are")), run_import),
        "demo-pool": Command("generate the synthetic demo pool with known defects", (
            arg("--out", type=path_arg, required=True), arg("--n", type=int, default=3000),
            arg("--seed", type=int, default=0)), run_demo_pool),
        "train-dfn": Command("train a data filtering network (open_clip_train) on a trusted set", (
            arg("--trusted", type=path_arg, required=True, help="trusted pool (parquet with jpg, text) or .tar shards"),
            arg("--out", type=path_arg, required=True, help="writes OUT/dfn.pt (embed: pretrained=OUT/dfn.pt), OUT/dfn.json"),
            arg("--model", default="curate-tiny-vit", help="open_clip architecture"),
            arg("--init", default=None, help="checkpoint to fine-tune (default: from scratch)"),
            arg("--epochs", type=int, default=train["epochs"], help="default %(default)s (the demo DFN's)"),
            arg("--batch-size", type=int, default=train["batch_size"], help="default %(default)s"),
            arg("--lr", type=float, default=train["lr"], help="peak learning rate, cosine schedule; default %(default)s"),
            arg("--device", default="auto", help="auto (cuda when visible), cpu or cuda")), run_train_dfn),
    }
