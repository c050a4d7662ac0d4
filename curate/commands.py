"""The `curate` commands: one table of command -> help, arguments, run function (curate.cli
parses and dispatches). Each run function takes the parsed arguments; commands marked ``engine``
get ``args.session`` (curate.engines.open_session) and --engine/--workers/--master."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.engines import ENGINES
from curate.outputs import claim_run_dir, directory_lock
from curate.stages import STAGE_MODULES

log = logging.getLogger("curate")

DEFAULT_RECIPE = Path("jobs/recipes/demo.yaml")
Argument = tuple[tuple[str, ...], dict[str, Any]]


@dataclass(frozen=True)
class Command:
    help: str
    arguments: tuple[Argument, ...]
    run: Callable[[argparse.Namespace], int | None]
    engine: bool = False   # --engine/--workers/--master, and a session opened for the command


def arg(*flags: str, **options: Any) -> Argument:
    return flags, options


POOL = arg("--pool", type=Path, required=True, help="pool directory (parquet shards)")
OUT = arg("--out", type=Path, required=True, help="run directory; re-running resumes it")
SET = arg("--set", action="append", default=[], metavar="KEY=VALUE",
          help="override: stage.key=value, select=EXPR or seed=N (repeatable; values are YAML scalars)")
ENGINE_ARGS = (arg("--engine", choices=ENGINES, default="local", help="local (default) or spark"),
               arg("--workers", type=int, default=None, help="local engine processes (default: all cores)"),
               arg("--master", default=None, help="Spark master (default: spark-submit's, else local[*])"))


def run_recipe_command(args: argparse.Namespace) -> None:
    from curate import pipeline
    from curate.recipe import load_recipe

    pipeline.run_recipe(load_recipe(args.recipe, args.set), args.pool, args.out, session=args.session,
                        strict=args.strict)


def run_stage_command(args: argparse.Namespace) -> None:
    from curate import pipeline
    from curate.recipe import parse_recipe

    overrides = [f"{args.command}.{item}" for item in args.set]
    recipe = parse_recipe({"stages": {args.command: {}}, "select": "true"}, args.command, overrides,
                          where="command line")
    with directory_lock(args.out):
        claim_run_dir(args.out)
        pipeline.check_pool(args.pool, args.out)
        pipeline.preflight(recipe, args.pool)
        for stage, cfg in recipe.stages:  # with the stages it needs first (e.g. metaclip's matching)
            manifest = pipeline.run_stage(stage, cfg, args.pool, args.out, session=args.session)
            log.info("%s: %s rows written to %s", stage.name, manifest.get("rows"), args.out / stage.name)


def run_subset_command(args: argparse.Namespace) -> None:
    from curate.engines.plan import stage_output_columns
    from curate.steps import subset

    stages = args.stages if args.stages is not None else sorted(stage_output_columns(args.out))
    manifest = subset.run_subset(args.pool, args.out, stages, args.select, args.session)
    log.info("subset: %s of %s rows selected; wrote %s", manifest["rows"], manifest["rows_in"], args.out / subset.SUBSET_NPY)


def run_ingest(args: argparse.Namespace) -> None:
    from curate.steps.ingest import ingest

    result = ingest(args.url_list, args.out, url_col=args.url_col, caption_col=args.caption_col,
                    processes=args.processes, threads=args.threads, resize_mode=args.resize_mode,
                    image_size=args.image_size, timeout=args.timeout, retries=args.retries, shard_size=args.shard_size,
                    overwrite=args.overwrite)
    print(json.dumps(result, indent=2, default=str))


def run_import(args: argparse.Namespace) -> None:
    from curate.steps.datacomp import import_datacomp

    print(json.dumps(import_datacomp(args.src, args.out, overwrite=args.overwrite), indent=2, default=str))


def run_demo_pool(args: argparse.Namespace) -> None:
    from curate.demo.pool import make_demo_pool

    print(json.dumps(make_demo_pool(args.out, n=args.n, seed=args.seed), indent=2, default=str))


def run_demo(args: argparse.Namespace) -> None:
    from curate.demo.run import run_demo as demo

    demo(args.out, n=args.n, recipe_path=args.recipe, overrides=args.set, session=args.session)


def run_reshard(args: argparse.Namespace) -> None:
    from curate.steps.reshard import ReshardConfig, reshard

    cfg = ReshardConfig(shard_size=args.shard_size, shuffle=args.shuffle, seed=args.seed, blur_faces=args.blur_faces)
    manifest = reshard(args.run_dir, args.out, cfg, pool=args.pool, session=args.session)
    print(json.dumps({key: manifest[key] for key in ("samples", "shards", "successes", "failures", "bytes")}, indent=2))


def run_concepts(args: argparse.Namespace) -> int:
    from curate.reports.concepts import run_report

    return run_report(args.run_dir, args.pool, args.concepts)


def run_calibrate(args: argparse.Namespace) -> None:
    from curate.steps import calibrate

    if args.what == "semdedup":
        result = calibrate.semdedup_curve(args.run_dir, args.pool, args.max_rows)
    else:
        result = calibrate.score_curve(args.run_dir, args.pool, args.column)
    print("\n".join(calibrate.table_lines(result)))


def run_train_dfn(args: argparse.Namespace) -> None:
    from curate.steps.train_dfn import TrainSettings, train_dfn

    settings = TrainSettings(model=args.model, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, device=args.device)
    info = train_dfn(args.trusted, args.out, settings)
    print(json.dumps({key: info[key] for key in ("model", "samples", "skipped", "final_loss", "seconds")}, indent=2))


def run_report(args: argparse.Namespace) -> None:
    from curate.reports.summary import summary
    from curate.runio import read_json

    print(summary(read_json(args.run_dir / "report.json")))
    if not args.no_html:
        from curate.reports.html import write_html_report

        print(f"wrote {write_html_report(args.run_dir, args.pool)}")


def _train_defaults() -> dict[str, Any]:
    from curate.steps.train_dfn import TrainSettings

    return {"epochs": TrainSettings.epochs, "batch_size": TrainSettings.batch_size, "lr": TrainSettings.lr}


RESHARD = Command("write a run's selected samples as webdataset tar shards", (
    arg("run_dir", type=Path, help="run directory (its subset.npy or subset/), or a subset .npy"),
    arg("--pool", type=Path, default=None, help="pool with image bytes (default: from RUN_DIR/_run.json)"),
    arg("--out", type=Path, required=True, help="directory for {:08d}.tar shards; re-running resumes"),
    arg("--shard-size", type=int, default=10000, help="samples per shard; default %(default)s"),
    arg("--shuffle", action="store_true", help="order by a hash of (uid, seed), not the pool's order"),
    arg("--seed", type=int, default=0),
    arg("--blur-faces", action="store_true", help="blur the face_bboxes boxes (DataComp pools)")),
    run_reshard, engine=True)


def pipeline_commands() -> dict[str, Command]:
    return {
        "run": Command("run a recipe: every stage, the subset, subset.npy and report.json",
                       (arg("recipe", type=Path, help="recipe YAML, e.g. jobs/recipes/web_default.yaml"), POOL, OUT, SET,
                        arg("--strict", action="store_true", help="stop (exit 2) when a stage removes more than the "
                            "recipe's max_removed_share (default 0.9) of the pool, or the select keeps nothing")),
                       run_recipe_command, engine=True),
        "subset": Command("select rows from stage columns; write subset/ and subset.npy", (
            POOL, arg("--out", type=Path, required=True, help="run directory holding the stage outputs"),
            arg("--select", required=True, help="boolean expression, e.g. \"basic_keep AND align_keep\""),
            arg("--stages", nargs="*", default=None, help="stages to join (default: all complete ones)")),
            run_subset_command, engine=True),
        "demo": Command("the whole demo: generate, serve, ingest, run the demo recipe", (
            arg("--out", type=Path, default=Path("out/demo")), arg("--n", type=int, default=3000),
            arg("--recipe", type=Path, default=DEFAULT_RECIPE), SET), run_demo, engine=True),
        "reshard": RESHARD,
    }


def pool_commands() -> dict[str, Command]:
    train = _train_defaults()
    return {
        "ingest": Command("download a URL list with img2dataset into a parquet pool", (
            arg("url_list", type=Path, help="parquet, csv or tsv with url and caption columns"),
            arg("--out", type=Path, required=True, help="pool directory to write"),
            arg("--url-col", default="url"), arg("--caption-col", default="caption"),
            arg("--processes", type=int, default=2), arg("--threads", type=int, default=16),
            arg("--resize-mode", default="no", help="img2dataset resize mode; 'no' keeps original bytes"),
            arg("--image-size", type=int, default=512),
            arg("--timeout", type=float, default=10.0, help="seconds per download"),
            arg("--retries", type=int, default=0),
            arg("--shard-size", type=int, default=None,
                help="samples per pool shard (default: about 4 shards per core, 256 to 10,000)"),
            arg("--overwrite", action="store_true", help="replace a pool curate wrote there from another URL list")),
            run_ingest),
        "import-datacomp": Command("import a DataComp pool (parquet + npz) with its embeddings",
                                   (arg("--src", type=Path, required=True), arg("--out", type=Path, required=True),
                                    arg("--overwrite", action="store_true",
                                        help="replace an import of other source files")), run_import),
        "demo-pool": Command("generate the synthetic demo pool with known defects", (
            arg("--out", type=Path, required=True), arg("--n", type=int, default=3000),
            arg("--seed", type=int, default=0)), run_demo_pool),
        "train-dfn": Command("train a data filtering network (open_clip_train) on a trusted set", (
            arg("--trusted", type=Path, required=True, help="trusted pool (parquet with jpg, text) or .tar shards"),
            arg("--out", type=Path, required=True, help="writes OUT/dfn.pt (embed: pretrained=OUT/dfn.pt), OUT/dfn.json"),
            arg("--model", default="curate-tiny-vit", help="open_clip architecture"),
            arg("--init", default=None, help="checkpoint to fine-tune (default: from scratch)"),
            arg("--epochs", type=int, default=train["epochs"], help="default %(default)s (the demo DFN's)"),
            arg("--batch-size", type=int, default=train["batch_size"], help="default %(default)s"),
            arg("--lr", type=float, default=train["lr"], help="peak learning rate, cosine schedule; default %(default)s"),
            arg("--device", default="auto", help="auto (cuda when visible), cpu or cuda")), run_train_dfn),
    }


def report_commands() -> dict[str, Command]:
    return {
        "report": Command("print the summary of a run directory's report.json; write report.html", (
            arg("run_dir", type=Path),
            arg("--no-html", action="store_true", help="only print the summary; skip RUN_DIR/report.html"),
            arg("--pool", type=Path, default=None, help="pool directory (default: from RUN_DIR/_run.json)")), run_report),
        "calibrate": Command("how eps (SemDeDup) or a score threshold acts on this pool: share kept per value", (
            arg("what", choices=("semdedup", "score")),
            arg("run_dir", type=Path, help="a run directory with a cluster stage (semdedup) or a score stage"),
            arg("--pool", type=Path, default=None, help="pool directory (default: from RUN_DIR/_run.json)"),
            arg("--max-rows", type=int, default=200_000, help="semdedup: rows of whole clusters to use"),
            arg("--column", default="score_clip", help="score: the score column (the run's, or the pool's)")),
            run_calibrate),
        "metaclip-report": Command("MetaCLIP entry/concept frequencies of a run directory", (
            arg("run_dir", type=Path),
            arg("--pool", type=Path, default=None, help="pool directory (default: from RUN_DIR/_run.json)"),
            arg("--concepts", type=Path, default=None, help="concept list, e.g. ImageNet class names")), run_concepts),
    }


def commands() -> dict[str, Command]:
    """Every `curate` subcommand: the pipeline, pool and report commands, and one per stage."""
    table = {**pipeline_commands(), **pool_commands(), **report_commands()}
    for name in STAGE_MODULES:
        table[name] = Command(f"run the {name} stage alone (adds its columns under OUT/{name}/)",
                              (POOL, OUT, arg("--set", action="append", default=[], metavar="KEY=VALUE",
                                              help="config override, e.g. --set min_side=300")),
                              run_stage_command, engine=True)
    return table
