"""What the engines do when a stage function raises: name the stage, the pool shard and the row.

Locally the failing partition's pool shard is known, and a ``RowError`` gives the row. On Spark a
task only sees Arrow batches, so the wrapped function raises a marked message carrying the stage,
the step, the cause and the first (or failing) row's uid; the driver finds the marked message in
Spark's exception, looks the uid up in the pool's shards (on this error path only) and raises the
same ``StageError`` the local engine would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.engines.plan import shard_key
from curate.errors import PoolError, RowError, StageError, describe_exception
from curate.fingerprint import file_signature
from curate.pool import Shard, read_shard

MARKER = "curate-stage-error:"
_MARKED = re.compile(re.escape(MARKER) + r"(\{.*?\})(?:\n|$)")
_ABORTED = re.compile(r"Job aborted due to stage failure: ([^\n]+)")


def failing_uid(table: pa.Table | None, error: BaseException) -> tuple[int | None, str | None]:
    """(row, uid) of the row a ``RowError`` names, else (None, the batch's first uid)."""
    if table is None or "uid" not in table.column_names or table.num_rows == 0:
        return None, None
    row = error.row if isinstance(error, RowError) else None
    uid = table.column("uid")[row if row is not None and row < table.num_rows else 0].as_py()
    return row, uid


@contextmanager
def local_failures(stage: str, step: str, source: Path | str, table: pa.Table | None = None,
                   locate: Callable[[int | None], tuple[str, int | None]] | None = None) -> Iterator[None]:
    """Wrap an exception from stage code as a StageError naming ``source`` and, for a RowError, the
    row and uid. ``locate`` maps a batch row (or None) to (source file, row in it) when the batch
    is not one whole shard (a group of the group path)."""
    try:
        yield
    except StageError:
        raise
    except Exception as error:
        row, uid = failing_uid(table, error)
        if not isinstance(error, RowError):
            row, uid = None, None  # a batch's first uid says nothing about where a whole-batch failure lies
        if locate is not None:
            source, row = locate(row)
        raise StageError(stage, str(source), describe_exception(error), row=row, uid=uid, step=step) from error


def marked(stage: str, step: str, table: pa.Table, error: BaseException) -> RuntimeError:
    """The exception a Spark task raises: the marker and what the driver needs, as JSON."""
    row, uid = failing_uid(table, error)
    payload = {"stage": stage, "step": step, "cause": describe_exception(error), "uid": uid,
               "row_error": isinstance(error, RowError)}
    return RuntimeError(MARKER + json.dumps(payload))


def spark_failure(error: BaseException, shards: list[Shard], stage: str | None = None) -> StageError | None:
    """The StageError behind a Spark job failure raised by ``marked``, with the uid's shard and row;
    or, for a job Spark gave up on for another reason (an executor lost more often than
    spark.task.maxFailures allows, say), a StageError naming ``stage`` with Spark's one-line reason."""
    found = _MARKED.search(str(error))
    if found is None:
        aborted = _ABORTED.search(str(error))
        if aborted is None or stage is None:
            return None
        return StageError(stage, None, f"Spark gave up on the job after its task retries: {aborted.group(1)[:600]}")
    payload = json.loads(found.group(1))
    source, row = locate_uid(shards, payload["uid"]) if payload.get("uid") else (None, None)
    if not payload.get("row_error"):
        return StageError(payload["stage"], f"the batch starting at row {row} of {source}" if source else None,
                          payload["cause"], step=payload["step"])
    return StageError(payload["stage"], source, payload["cause"], row=row, uid=payload["uid"], step=payload["step"])


def locate_uid(shards: list[Shard], uid: str) -> tuple[str | None, int | None]:
    """The pool shard and row holding ``uid`` (a scan of uid columns; error path only)."""
    for shard in shards:
        uids = read_shard(shard.path, ["uid"]).column("uid")
        index = pc.index(uids, uid).as_py()
        if index >= 0:
            return str(shard.path), index
    return None, None


def check_shards_unchanged(stage: str, shards: list[Shard], signatures: dict[str, str]) -> None:
    """Before a stage is marked complete: every pool shard it read must still be the one signed at its
    start (``signatures``: the plan's input signatures). A shard deleted or rewritten meanwhile is a
    PoolError, the stage stays unfinished, and its changed fingerprint makes the next run recompute it
    from the shards as they are then: nothing computed from a half-old pool is ever reused."""
    for shard in shards:
        if not shard.path.is_file():
            raise PoolError(f"{shard.path}: pool shard disappeared while stage {stage} ran; the stage is not "
                            f"marked complete (restore the shard, or re-run on the pool as it is now)")
        if file_signature(shard.path) != signatures.get(shard_key(shard.path)):
            raise PoolError(f"{shard.path}: pool shard changed while stage {stage} ran; the stage is not marked "
                            f"complete, and a re-run recomputes it from the shard as it is now")
