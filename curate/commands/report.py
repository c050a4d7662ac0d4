"""`curate report`, `calibrate`, `metaclip-report`: reading a run."""

from __future__ import annotations

import argparse

from curate.commands.base import Command, arg, path_arg


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


def run_report(args: argparse.Namespace) -> None:
    from curate.reports.summary import summary
    from curate.runio import read_json

    print(summary(read_json(args.run_dir / "report.json")))
    if not args.no_html:
        from curate.reports.html import write_html_report

        print(f"wrote {write_html_report(args.run_dir, args.pool)}")


def report_commands() -> dict[str, Command]:
    return {
        "report": Command("print the summary of a run directory's report.json; write report.html", (
            arg("run_dir", type=path_arg),
            arg("--no-html", action="store_true", help="only print the summary; skip RUN_DIR/report.html"),
            arg("--pool", type=path_arg, default=None, help="pool directory (default: from RUN_DIR/_run.json)")), run_report),
        "calibrate": Command("how eps (SemDeDup) or a score threshold acts on this pool: share kept per value", (
            arg("what", choices=("semdedup", "score")),
            arg("run_dir", type=path_arg, help="a run directory with a cluster stage (semdedup) or a score stage"),
            arg("--pool", type=path_arg, default=None, help="pool directory (default: from RUN_DIR/_run.json)"),
            arg("--max-rows", type=int, default=200_000, help="semdedup: rows of whole clusters to use"),
            arg("--column", default="score_clip", help="score: the score column (the run's, or the pool's)")),
            run_calibrate),
        "metaclip-report": Command("MetaCLIP entry/concept frequencies of a run directory", (
            arg("run_dir", type=path_arg),
            arg("--pool", type=path_arg, default=None, help="pool directory (default: from RUN_DIR/_run.json)"),
            arg("--concepts", type=path_arg, default=None, help="concept list, e.g. ImageNet class names")), run_concepts),
    }
