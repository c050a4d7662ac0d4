"""One error type per kind of mistake (DESIGN.md section 6). Every one is a ``CurateError``: the CLI
prints its message on one line and exits 2 (``--debug`` shows the traceback).

- ``RecipeError``: a recipe, a stage config or a command-line value is wrong (unknown key, bad type,
  an impossible setting); raised before any data is read.
- ``ModelError``: an unknown model name, a missing checkpoint, a file that is not one.
- ``PoolError``: the pool itself is wrong (unreadable shard, missing column, bad or duplicate uid,
  shards that disagree); names the file and, where there is one, the row.
- ``RowError``: raised by stage code for one bad value in a batch, with the batch row; the engine
  turns it into a ``StageError`` naming the pool shard and uid.
- ``StageError``: anything a stage function raised, wrapped by the engine with the stage, the pool
  shard it was working on and, where known, the row and uid.
- ``ReshardError``: input the resharder cannot use.
- ``TrainingError``: open_clip's trainer failed (the tail of its log is in the message).
- ``SafeguardError``: under ``--strict``, a stage that removes more than the recipe's
  ``max_removed_share`` of the pool, or a select that keeps nothing.
- ``RunDirError``: an output directory curate cannot use (someone else's files, a symlink, another
  run holding it); ``DiskFullError``, one that ran out of space while a file was written.
"""

from __future__ import annotations


class CurateError(Exception):
    """A mistake the user can fix; the message says what and where."""


class RecipeError(CurateError, ValueError):
    """A bad recipe or stage configuration: unknown stage, unknown key, wrong type or value."""


class ModelError(RecipeError):
    """An unknown model name, a missing checkpoint, or a file that is not a checkpoint."""


class PoolError(CurateError, ValueError):
    """A structural problem with a pool: the message names the file, and the row if any."""


class ReshardError(PoolError):
    """Input reshard cannot use: the message says what and, where it can, which sample."""


class RunDirError(CurateError):
    """An output directory that curate may not write: not its own, a symlink, or in use."""


class DiskFullError(RunDirError):
    """A write that ran out of space (or quota, or file-size limit): names the file, of which nothing
    was kept; a re-run resumes once space is freed."""


class TrainingError(CurateError):
    """A training run (open_clip_train) failed; the message ends with the tail of its log."""


class SafeguardError(CurateError):
    """A run that would remove nearly everything, refused under --strict (the warnings say why)."""


class RowError(CurateError, ValueError):
    """A bad value in one row of the batch a stage function was given (``row`` counts from 0)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row

    def __reduce__(self):
        return (type(self), (str(self), self.row))


class StageError(CurateError):
    """A stage function failed on some input: which stage, which pool shard, which row and uid."""

    def __init__(self, stage: str, source: str | None, cause: str, *, row: int | None = None,
                 uid: str | None = None, step: str = "apply"):
        self.stage, self.source, self.cause, self.row, self.uid, self.step = stage, source, cause, row, uid, step
        where = f" in {source}" if source else ""
        at = (f" row {row}" if row is not None else "") + (f" (uid {uid})" if uid else "")
        super().__init__(f"stage {stage} ({step}){where}{at}: {cause}")

    def __reduce__(self):
        return (_rebuild_stage_error, (self.stage, self.source, self.cause, self.row, self.uid, self.step))


def _rebuild_stage_error(stage, source, cause, row, uid, step) -> StageError:
    return StageError(stage, source, cause, row=row, uid=uid, step=step)


def describe_exception(error: BaseException) -> str:
    """One line for an unexpected exception: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    name = type(error).__name__
    return f"{name}: {first[:500]}" if first else name
