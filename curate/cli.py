"""The `curate` command line: one subcommand per stage, plus ingest, import, subset, run, demo.

Every stage subcommand has the same shape: `curate STAGE --pool POOL --out OUT [--engine
local|spark] [--set key=value ...]`; it adds the stage's columns under OUT/STAGE/ and selects
nothing. `curate run RECIPE.yaml` runs a whole recipe and writes the subset.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from curate.engines import ENGINES
from curate.pool import PoolError
from curate.contract import RecipeError
from curate.stages import STAGE_MODULES
from curate.steps.train_dfn import TrainSettings

log = logging.getLogger("curate")

DEFAULT_RECIPE = Path("jobs/recipes/demo.yaml")


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="local", help="local (default) or spark")
    parser.add_argument("--workers", type=int, default=None, help="local engine processes (default: all cores)")
    parser.add_argument("--master", default=None, help="Spark master (default: spark-submit's, else local[*])")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe: every stage, the subset, subset.npy and report.json")
    run.add_argument("recipe", type=Path, help="recipe YAML, e.g. jobs/recipes/demo.yaml")
    run.add_argument("--pool", type=Path, required=True, help="pool directory (parquet shards)")
    run.add_argument("--out", type=Path, required=True, help="run directory; re-running resumes it")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override: stage.key=value, select=EXPR or seed=N (repeatable)")
    _engine_args(run)

    for name in STAGE_MODULES:
        stage = commands.add_parser(name, help=f"run the {name} stage alone (adds {name}_* columns)")
        stage.add_argument("--pool", type=Path, required=True)
        stage.add_argument("--out", type=Path, required=True)
        stage.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        _engine_args(stage)

    subset = commands.add_parser("subset", help="select rows from stage columns; write subset/ and subset.npy")
    subset.add_argument("--pool", type=Path, required=True)
    subset.add_argument("--out", type=Path, required=True, help="run directory holding the stage outputs")
    subset.add_argument("--select", required=True, help="SQL boolean expression, e.g. \"basic_keep AND align_keep\"")
    subset.add_argument("--stages", nargs="*", default=None, help="stages to join (default: all complete ones)")
    _engine_args(subset)

    ingest = commands.add_parser("ingest", help="download a URL list with img2dataset into a parquet pool")
    ingest.add_argument("url_list", type=Path, help="parquet, csv or tsv with url and caption columns")
    ingest.add_argument("--out", type=Path, required=True, help="pool directory to write")
    ingest.add_argument("--url-col", default="url")
    ingest.add_argument("--caption-col", default="caption")
    ingest.add_argument("--processes", type=int, default=2)
    ingest.add_argument("--threads", type=int, default=16)
    ingest.add_argument("--resize-mode", default="no", help="img2dataset resize mode; 'no' keeps original bytes")
    ingest.add_argument("--image-size", type=int, default=512)
    ingest.add_argument("--timeout", type=float, default=10.0, help="seconds per download")
    ingest.add_argument("--retries", type=int, default=0)
    ingest.add_argument("--shard-size", type=int, default=10000, help="samples per pool shard")

    imp = commands.add_parser("import-datacomp", help="import a DataComp pool (parquet + npz) with its embeddings")
    imp.add_argument("--src", type=Path, required=True)
    imp.add_argument("--out", type=Path, required=True)

    demo_pool = commands.add_parser("demo-pool", help="generate the synthetic demo pool with known defects")
    demo_pool.add_argument("--out", type=Path, required=True)
    demo_pool.add_argument("--n", type=int, default=3000)
    demo_pool.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="the whole demo: generate, serve, ingest, run the demo recipe")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--n", type=int, default=3000)
    demo.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _engine_args(demo)

    dfn = commands.add_parser("train-dfn", help="train a data filtering network (open_clip_train) on a trusted set")
    dfn.add_argument("--trusted", type=Path, required=True, help="trusted pool (parquet with jpg, text) or .tar shards")
    dfn.add_argument("--out", type=Path, required=True, help="writes OUT/dfn.pt (embed: pretrained=OUT/dfn.pt), OUT/dfn.json")
    dfn.add_argument("--model", default="curate-tiny-vit", help="open_clip architecture")
    dfn.add_argument("--init", default=None, help="checkpoint to fine-tune (default: from scratch)")
    dfn.add_argument("--epochs", type=int, default=TrainSettings.epochs, help="default %(default)s (the demo DFN's)")
    dfn.add_argument("--batch-size", type=int, default=TrainSettings.batch_size, help="default %(default)s")
    dfn.add_argument("--lr", type=float, default=TrainSettings.lr, help="peak learning rate, cosine schedule; default %(default)s")
    dfn.add_argument("--device", default="auto", help="auto (cuda when visible), cpu or cuda")

    report = commands.add_parser("report", help="print the summary of a run directory's report.json; write report.html")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--no-html", action="store_true", help="only print the summary; skip RUN_DIR/report.html")
    report.add_argument("--pool", type=Path, default=None, help="pool directory (default: from RUN_DIR/_run.json)")

    concepts = commands.add_parser("metaclip-report", help="MetaCLIP entry/concept frequencies of a run directory")
    concepts.add_argument("run_dir", type=Path)
    concepts.add_argument("--pool", type=Path, default=None, help="pool directory (default: from RUN_DIR/_run.json)")
    concepts.add_argument("--concepts", type=Path, default=None, help="concept list, e.g. ImageNet class names")

    reshard = commands.add_parser("reshard", help="write a run's selected samples as webdataset tar shards")
    reshard.add_argument("run_dir", type=Path, help="run directory (its subset.npy or subset/), or a subset .npy")
    reshard.add_argument("--pool", type=Path, default=None, help="pool with image bytes (default: from RUN_DIR/_run.json)")
    reshard.add_argument("--out", type=Path, required=True, help="directory for {:08d}.tar shards; re-running resumes")
    reshard.add_argument("--shard-size", type=int, default=10000, help="samples per shard; default %(default)s")
    reshard.add_argument("--shuffle", action="store_true", help="order by a hash of (uid, seed), not the pool's order")
    reshard.add_argument("--seed", type=int, default=0)
    reshard.add_argument("--blur-faces", action="store_true", help="blur the face_bboxes boxes (DataComp pools)")
    _engine_args(reshard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "urllib3", "PIL", "faiss.loader"):  # faiss.loader: "could not load AVX2" at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except (PoolError, RecipeError, FileNotFoundError) as error:
        print(f"curate {args.command}: error: {error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from curate import pipeline
    from curate import recipe as recipes

    if args.command == "run":
        recipe = recipes.load_recipe(args.recipe, args.set)
        pipeline.run_recipe(recipe, args.pool, args.out, engine=args.engine, workers=args.workers, master=args.master)
    elif args.command in STAGE_MODULES:
        _run_one_stage(args)
    elif args.command == "subset":
        _run_subset(args)
    elif args.command == "ingest":
        from curate.steps.ingest import ingest

        result = ingest(args.url_list, args.out, url_col=args.url_col, caption_col=args.caption_col,
                        processes=args.processes, threads=args.threads, resize_mode=args.resize_mode,
                        image_size=args.image_size, timeout=args.timeout, retries=args.retries,
                        shard_size=args.shard_size)
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "import-datacomp":
        from curate.steps.datacomp import import_datacomp

        print(json.dumps(import_datacomp(args.src, args.out), indent=2, default=str))
    elif args.command == "demo-pool":
        from curate.demo.pool import make_demo_pool

        print(json.dumps(make_demo_pool(args.out, n=args.n, seed=args.seed), indent=2, default=str))
    elif args.command == "demo":
        from curate.demo.run import run_demo

        run_demo(args.out, n=args.n, recipe_path=args.recipe, overrides=args.set, engine=args.engine,
                 workers=args.workers, master=args.master)
    elif args.command == "reshard":
        from curate.steps.reshard import ReshardConfig, reshard

        cfg = ReshardConfig(shard_size=args.shard_size, shuffle=args.shuffle, seed=args.seed, blur_faces=args.blur_faces)
        spark = None
        if args.engine == "spark":
            from curate.engines.spark import get_spark

            spark = get_spark(args.master)
        manifest = reshard(args.run_dir, args.out, cfg, pool=args.pool, engine=args.engine, workers=args.workers, spark=spark)
        print(json.dumps({key: manifest[key] for key in ("samples", "shards", "successes", "failures", "bytes")}, indent=2))
    elif args.command == "metaclip-report":
        from curate.reports.concepts import run_report

        return run_report(args.run_dir, args.pool, args.concepts)
    elif args.command == "train-dfn":
        from curate.steps.train_dfn import TrainSettings, train_dfn

        settings = TrainSettings(model=args.model, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
                                 lr=args.lr, device=args.device)
        info = train_dfn(args.trusted, args.out, settings)
        print(json.dumps({key: info[key] for key in ("model", "samples", "skipped", "final_loss", "seconds")}, indent=2))
    elif args.command == "report":
        from curate.reports.summary import summary
        from curate.runio import read_json

        print(summary(read_json(args.run_dir / "report.json")))
        if not args.no_html:
            from curate.reports.html import write_html_report

            print(f"wrote {write_html_report(args.run_dir, args.pool)}")
    return 0


def _run_one_stage(args: argparse.Namespace) -> None:
    from curate import pipeline
    from curate.recipe import parse_recipe

    overrides = [f"{args.command}.{item}" for item in args.set]
    recipe = parse_recipe({"stages": {args.command: {}}, "select": "true"}, args.command, overrides, where="command line")
    spark = None
    if args.engine == "spark":
        from curate.engines.spark import get_spark

        spark = get_spark(args.master)
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline.check_pool(args.pool, args.out)
    name, cfg = recipe.stages[0]
    manifest = pipeline.run_stage(name, cfg, args.pool, args.out, engine=args.engine, workers=args.workers, spark=spark)
    log.info("%s: %s rows written to %s", name, manifest.get("rows"), args.out / name)


def _run_subset(args: argparse.Namespace) -> None:
    from curate.steps import subset
    from curate.engines.plan import stage_output_columns

    stages = args.stages if args.stages is not None else sorted(stage_output_columns(args.out))
    if args.engine == "spark":
        from curate.engines.spark import get_spark

        manifest = subset.run_subset_spark(args.pool, args.out, stages, args.select, spark=get_spark(args.master))
    else:
        manifest = subset.run_subset_local(args.pool, args.out, stages, args.select, workers=args.workers)
    log.info("subset: %s of %s rows selected; wrote %s", manifest["rows"], manifest["rows_in"], args.out / subset.SUBSET_NPY)


if __name__ == "__main__":
    sys.exit(main())
