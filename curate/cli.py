"""The `curate` command line: one subcommand per stage, plus the whole-pool steps and the demo.

Every stage subcommand has the same shape: `curate STAGE --pool POOL --out OUT [--engine
local|spark] [--set key=value ...]`; it adds the stage's columns under OUT/STAGE/ and selects
nothing. `curate run RECIPE.yaml` runs a whole recipe and writes the subset.

Path arguments may be URLs (s3://, gs://, hdfs://, or any fsspec protocol): the command works on
a local mirror (CURATE_CACHE_DIR) and uploads --out after each stage and at the end (curate.remote).

A mistake (a bad recipe, a broken pool shard, a stage failing on some row) prints one line
naming what and where, and exits with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from curate import remote
from curate.commands import ENGINE_ARGS, Command, commands
from curate.engines import open_session
from curate.errors import CurateError, RecipeError
from curate.remote import RemotePath

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
    if out.is_dir() and any(out.iterdir()) and not any(p.name.startswith(("_", ".")) for p in out.iterdir()):
        return None  # someone else's folder: the command will refuse it; write nothing there
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def main(argv: list[str] | None = None) -> int:
    table = commands()
    args = build_parser(table).parse_args(argv)
    try:
        outputs = mirror_remote_args(args)
    except CurateError as error:  # a remote path that cannot be reached or mirrored
        return failed(args, error)
    out = getattr(args, "out", None)
    handler = configure_logging(args.verbose, out if isinstance(out, Path) else None)
    log.info("curate %s", " ".join(argv if argv is not None else sys.argv[1:]))
    try:
        status = run_command(table[args.command], args)
        push_outputs(outputs)
        return status
    except CurateError as error:  # the upload of a remote --out
        return failed(args, error)
    except BaseException:
        push_outputs(outputs)  # what finished before a crash is kept remotely too
        raise
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def mirror_remote_args(args: argparse.Namespace) -> list[tuple[Path, RemotePath]]:
    """Replace every remote path argument by its local mirror (curate.remote): inputs must exist and
    are pulled; ``--out`` is pulled when it exists (a re-run resumes it, on any machine) and returned
    to be pushed after each recipe stage (``args.checkpoint``) and when the command ends."""
    remote_names = [name for name, value in vars(args).items() if isinstance(value, RemotePath)]
    if remote_names and getattr(args, "link_embeddings", False):
        raise RecipeError("--link-embeddings with a remote --src or --out: the links would name this machine's "
                          "mirror of the npz files, which other machines do not have; import without it")
    outputs = []
    for name, value in vars(args).items():
        if isinstance(value, list) and any(isinstance(item, RemotePath) for item in value):
            setattr(args, name, [remote.pull(item, must_exist=True) if isinstance(item, RemotePath) else item
                                 for item in value])
        elif isinstance(value, RemotePath):
            setattr(args, name, remote.pull(value, must_exist=name != "out"))
            if name == "out":
                outputs.append((getattr(args, name), value))
    args.checkpoint = (lambda: push_outputs(outputs)) if outputs else None
    return outputs


def push_outputs(outputs: list[tuple[Path, RemotePath]]) -> None:
    for local, target in outputs:
        if local.exists():
            remote.push(local, target)


def run_command(command: Command, args: argparse.Namespace) -> int:
    try:
        if not command.engine:
            return command.run(args) or 0
        with open_session(args.engine, workers=args.workers, master=args.master) as session:
            args.session = session
            return command.run(args) or 0
    except CurateError as error:
        return failed(args, error)
    except KeyboardInterrupt:
        print(f"curate {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def failed(args: argparse.Namespace, error: CurateError) -> int:
    """One line on stderr and in the log file (``--debug``: the traceback instead); exit status 2."""
    if args.debug:
        raise error
    log.debug("%s", error, exc_info=True)
    print(f"curate {args.command}: error: {error}", file=sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(f"error: {error}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
