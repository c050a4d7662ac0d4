"""What every `curate` command module shares: the Command record, ``arg`` and the common arguments."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.engines import ENGINES
from curate.remote import RemotePath, parse_path

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


def path_arg(value: str) -> Path | RemotePath:
    """A path argument: a local path, a ``file://`` URL, or a remote URL (s3://, gs://, hdfs://, any
    fsspec protocol) that the CLI mirrors locally before the command and, for --out, uploads after
    it (curate.remote)."""
    try:
        return parse_path(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


POOL = arg("--pool", type=path_arg, required=True, help="pool directory (parquet shards), or a URL (s3://...)")
OUT = arg("--out", type=path_arg, required=True, help="run directory, or a URL (s3://...); re-running resumes it")
SET = arg("--set", action="append", default=[], metavar="KEY=VALUE",
          help="override: stage.key=value, select=EXPR or seed=N (repeatable; values are YAML scalars)")
ENGINE_ARGS = (arg("--engine", choices=ENGINES, default="local", help="local (default) or spark"),
               arg("--workers", type=int, default=None, help="local engine processes (default: all cores)"),
               arg("--master", default=None, help="Spark master (default: spark-submit's, else local[*])"))
