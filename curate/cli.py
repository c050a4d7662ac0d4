"""The `curate` command line: one subcommand per stage, plus the whole-pool steps and the demo.

Every stage subcommand has the same shape: `curate STAGE --pool POOL --out OUT [--engine
local|spark] [--set key=value ...]`; it adds the stage's columns under OUT/STAGE/ and selects
nothing. `curate run RECIPE.yaml` runs a whole recipe and writes the subset.

A mistake (a bad recipe, a broken pool shard, a stage failing on some row) prints one line
naming what and where, and exits with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from curate.commands import ENGINE_ARGS, Command, commands
from curate.engines import open_session
from curate.errors import CurateError

log = logging.getLogger("curate")


def build_parser(table: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in table.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        for flags, options in (*command.arguments, *(ENGINE_ARGS if command.engine else ())):
            sub.add_argument(*flags, **options)
    return parser


LOG_FILE = "_curate.log"  # in the command's --out directory, appended: every run's lines, with dates


def configure_logging(verbose: bool, out: Path | None = None) -> logging.Handler | None:
    """Log lines on stderr (tqdm bars instead when it is a terminal, curate.progress) and, for a
    command with --out, appended to OUT/_curate.log, so a run can be followed with `tail -f`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "urllib3", "PIL", "faiss.loader"):  # faiss.loader: "could not load AVX2" at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if out is None or out.is_symlink() or (out.exists() and not out.is_dir()):
        return None
    if out.is_dir() and any(out.iterdir()) and not any(p.name.startswith("_") for p in out.iterdir()):
        return None  # someone else's folder: the command will refuse it; write nothing there
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def main(argv: list[str] | None = None) -> int:
    table = commands()
    args = build_parser(table).parse_args(argv)
    out = getattr(args, "out", None)
    handler = configure_logging(args.verbose, out if isinstance(out, Path) else None)
    log.info("curate %s", " ".join(argv if argv is not None else sys.argv[1:]))
    try:
        return run_command(table[args.command], args)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def run_command(command: Command, args: argparse.Namespace) -> int:
    try:
        if not command.engine:
            return command.run(args) or 0
        with open_session(args.engine, workers=args.workers, master=args.master) as session:
            args.session = session
            return command.run(args) or 0
    except CurateError as error:
        if args.debug:
            raise
        log.debug("%s", error, exc_info=True)
        print(f"curate {args.command}: error: {error}", file=sys.stderr)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.stream.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        print(f"curate {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
