"""`curate run`, `subset`, `demo`, `reshard` and one command per stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curate.commands.base import DEFAULT_RECIPE, OUT, POOL, SET, Command, arg, log, path_arg
from curate.outputs import claim_run_dir, directory_lock


def run_recipe_command(args: argparse.Namespace) -> None:
    from curate import pipeline
    from curate.recipe import load_recipe

    pipeline.run_recipe(load_recipe(args.recipe, args.set), args.pool, args.out, session=args.session,
                        strict=args.strict, frozen=args.frozen, on_stage=args.checkpoint)


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


def run_demo(args: argparse.Namespace) -> None:
    from curate.demo.run import run_demo as demo

    demo(args.out, n=args.n, recipe_path=args.recipe, overrides=args.set, session=args.session,
         output_format=args.output_format)


def run_reshard(args: argparse.Namespace) -> None:
    from curate.steps.reshard import ReshardConfig, reshard

    cfg = ReshardConfig(shard_size=args.shard_size, shuffle=args.shuffle, seed=args.seed, blur_faces=args.blur_faces)
    manifest = reshard(args.run_dir, args.out, cfg, pool=args.pool, session=args.session)
    print(json.dumps({key: manifest[key] for key in ("samples", "shards", "successes", "failures", "bytes")}, indent=2))


RESHARD = Command("write a run's selected samples as webdataset tar shards", (
    arg("run_dir", type=path_arg, help="run directory (its subset.npy or subset/), or a subset .npy"),
    arg("--pool", type=path_arg, default=None, help="pool with image bytes (default: from RUN_DIR/_run.json)"),
    arg("--out", type=path_arg, required=True, help="directory for {:08d}.tar shards; re-running resumes"),
    arg("--shard-size", type=int, default=10000, help="samples per shard; default %(default)s"),
    arg("--shuffle", action="store_true", help="order by a hash of (uid, seed), not the pool's order"),
    arg("--seed", type=int, default=0),
    arg("--blur-faces", action="store_true", help="blur the face_bboxes boxes (DataComp pools)")),
    run_reshard, engine=True)


def pipeline_commands() -> dict[str, Command]:
    return {
        "run": Command("run a recipe: every stage, the subset, subset.npy and report.json",
                       (arg("recipe", type=path_arg, help="recipe YAML, e.g. jobs/recipes/web_default.yaml"), POOL, OUT, SET,
                        arg("--strict", action="store_true", help="stop (exit 2) when a stage removes more than the "
                            "recipe's max_removed_share (default 0.9) of the pool, or the select keeps nothing"),
                        arg("--frozen", type=path_arg, default=None, metavar="PREVIOUS_OUT",
                            help="incremental curation: keep the fitted statistics of an earlier run of this recipe "
                                 "(MetaCLIP counts, score thresholds, centroids, SemDeDup's kept rows, DBP's "
                                 "cut-offs) instead of refitting them on this pool; rows that run saw keep its "
                                 "decisions, new rows are decided by the same statistics (README: Incremental "
                                 "curation)")),
                       run_recipe_command, engine=True),
        "subset": Command("select rows from stage columns; write subset/ and subset.npy", (
            POOL, arg("--out", type=path_arg, required=True, help="run directory holding the stage outputs"),
            arg("--select", required=True, help="boolean expression, e.g. \"basic_keep AND align_keep\""),
            arg("--stages", nargs="*", default=None, help="stages to join (default: all complete ones)")),
            run_subset_command, engine=True),
        "demo": Command("the whole demo: generate, serve, ingest, run the demo recipe", (
            arg("--out", type=path_arg, default=Path("out/demo")), arg("--n", type=int, default=3000),
            arg("--recipe", type=path_arg, default=DEFAULT_RECIPE), SET,
            arg("--output-format", choices=("parquet", "webdataset"), default="parquet",
                help="how ingest stores the demo pool's images: in the parquet shards, or in webdataset tars "
                     "beside them (read in place)")), run_demo, engine=True),
        "reshard": RESHARD,
    }
