"""What every `curate` command module shares: the Command record, ``arg`` and the common arguments."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.engines import ENGINES

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


def local_path(value: str) -> Path:
    """A path argument: a local path or a ``file://`` URL. Object-store URLs (s3://, gs://, ...) are
    refused with what to do instead: curate reads and writes pools through the local filesystem
    (resume markers and atomic renames need one), so mount the bucket (s3fs, gcsfuse, a cluster's
    shared mount) and pass the mount path."""
    scheme, separator, _ = value.partition("://")
    if not separator:
        return Path(value)
    if scheme == "file":
        from urllib.parse import unquote, urlparse

        parsed = urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise argparse.ArgumentTypeError(f"{value}: a file:// URL must name this machine (file:///path)")
        return Path(unquote(parsed.path))
    raise argparse.ArgumentTypeError(f"{value}: {scheme}:// paths are not read directly; mount the bucket "
                                     f"(e.g. s3fs or gcsfuse) and pass the mounted directory")


POOL = arg("--pool", type=local_path, required=True, help="pool directory (parquet shards)")
OUT = arg("--out", type=local_path, required=True, help="run directory; re-running resumes it")
SET = arg("--set", action="append", default=[], metavar="KEY=VALUE",
          help="override: stage.key=value, select=EXPR or seed=N (repeatable; values are YAML scalars)")
ENGINE_ARGS = (arg("--engine", choices=ENGINES, default="local", help="local (default) or spark"),
               arg("--workers", type=int, default=None, help="local engine processes (default: all cores)"),
               arg("--master", default=None, help="Spark master (default: spark-submit's, else local[*])"))
