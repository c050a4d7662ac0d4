"""`curate evaluate` and `demo-tasks`: training on subsets and zero-shot evaluation."""

from __future__ import annotations

import argparse
import json

from curate.commands.base import Command, arg, path_arg


def run_evaluate(args: argparse.Namespace) -> None:
    from curate.reports.evaluation import write_html
    from curate.steps.eval_summary import table_lines
    from curate.steps.evaluate import EvalSettings, evaluate

    settings = EvalSettings(model=args.model, samples_seen=args.samples_seen, batch_size=args.batch_size, lr=args.lr,
                            wd=args.wd, warmup=args.warmup, seeds=args.seeds, device=args.device)
    baselines = tuple(b for b in args.baseline.split(",") if b) if args.baseline != "none" else ()
    summary = evaluate(args.run_dirs, args.tasks, args.out, settings, args.session, baselines)
    print("\n".join([*table_lines(summary), f"wrote {args.out}/results.parquet, summary.json and "
                                            f"{write_html(summary, args.out / 'report.html')}"]))


def run_demo_tasks(args: argparse.Namespace) -> None:
    from curate.demo.tasks import write_demo_tasks

    print(json.dumps(write_demo_tasks(args.out), indent=2))


def evaluate_commands() -> dict[str, Command]:
    from curate.steps.evaluate import EvalSettings

    ev = {name: getattr(EvalSettings, name) for name in ("model", "samples_seen", "batch_size", "lr", "wd", "seeds")}
    return {
        "evaluate": Command("train a CLIP on each run's subset and on baselines of the same size; zero-shot "
                            "evaluation with CLIP_benchmark (DataComp's protocol in miniature)", (
            arg("run_dirs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run directories with subset.npy"),
            arg("--tasks", type=path_arg, required=True, help="a task directory in CLIP_benchmark's webdataset layout, or "
                "a directory of them (`curate demo-tasks`, or DataComp's download_evalsets.py output)"),
            arg("--out", type=path_arg, required=True, help="writes OUT/results.parquet, summary.json, report.html; "
                "re-running resumes"),
            arg("--baseline", default="random,no_filter", help="comma list of random (a uid-hashed random subset "
                "of each candidate's size) and no_filter (every downloaded row), or none; default %(default)s"),
            arg("--seeds", type=int, default=ev["seeds"], help="trainings per subset (seeds 0..N-1); default %(default)s"),
            arg("--samples-seen", type=int, default=ev["samples_seen"], help="samples every training sees, whatever "
                "the subset's size (DataComp's rule); default %(default)s (the demo's miniature; DataComp small: 12.8M)"),
            arg("--model", default=ev["model"], help="open_clip architecture, trained from scratch; default %(default)s"),
            arg("--batch-size", type=int, default=ev["batch_size"], help="default %(default)s"),
            arg("--lr", type=float, default=ev["lr"], help="peak learning rate, cosine schedule; default %(default)s"),
            arg("--wd", type=float, default=ev["wd"], help="weight decay; default %(default)s"), arg(
                "--warmup", type=int, default=None, help="warmup steps; default a tenth of the steps"),
            arg("--device", default="auto", help="auto (cuda when visible), cpu or cuda")), run_evaluate, engine=True),
        "demo-tasks": Command("write the demo's zero-shot evaluation tasks (CLIP_benchmark webdataset layout)", (
            arg("--out", type=path_arg, required=True),), run_demo_tasks),
    }
