"""The stage contract (DESIGN.md section 3): stages annotate, only the subset step selects.

A stage is a plain value an engine is handed (``Stage``): its functions are module-level functions
(no lambdas), so the value pickles by reference and a spawned worker or a Spark executor rebuilds
it by importing the modules that define them. Engines never look a stage up by name.

- ``config``: a frozen, keyword-only dataclass whose defaults are the paper's values. Its
  ``__post_init__`` checks values, so a bad setting fails when the recipe is read, before any data;
- ``reads(cfg)``: the columns it needs: pool columns, columns of an earlier stage of the run, or a
  pool sidecar's column written ``<dir>:<column>`` (which ``apply`` sees as plain ``<column>``);
- ``adds``: the columns it writes, named ``<stage>_<what>``; the engine adds ``uid``;
- ``apply(table, cfg, artifact)``: a pure per-batch function, Arrow in, Arrow columns out, one
  output row per input row, no I/O; it must not depend on how rows are batched;
- ``fit`` (optional): global statistics, as named passes (``Pass``). Per pass, ``partial`` maps a
  batch to a small table with exactly the columns of ``Pass.schema`` (key columns, then integer
  sum columns); every engine merges partials the same way (group by ``keys``, sum the rest; no
  keys: one row of sums), keeps the merged rows where the SQL predicate ``having(cfg)`` holds (so
  a large merged table never reaches one process), and ``finalize`` makes that pass's artifact.
  Pass k's ``partial`` and ``finalize`` receive pass k-1's artifact as ``previous`` (None for the
  first); the last pass's artifact is handed to ``apply``;
- ``group_by`` (optional): per-group work (e.g. per k-means cluster). ``group_by(table, cfg,
  artifact)`` gives each row's int64 group key (null: the row takes part in no group); ``apply`` is
  then called once per group with ALL of that group's rows (in no defined order), and with
  key-null rows in batches of any size;
- ``check_inputs(cfg, manifests)`` (optional): refuse upstream outputs made in an incompatible way
  (another model's embeddings, say), from the manifests of the sources it reads;
- ``describe(cfg)`` (optional): facts about the resolved config a consumer must check (the model,
  its weights, a metadata file's digest), merged into the stage's manifest and its fingerprint;
- ``max_workers(cfg)`` (optional): the most processes the local engine runs the stage in;
- ``before(cfg)`` (optional): stages a recipe runs first for this one, as (stage name, config
  values), e.g. MetaCLIP's matching before its balancing;
- ``artifact_name`` (optional): also publish the fitted artifact as OUT/<stage>/<this name>;
- ``freeze`` (optional): what incremental curation (``curate run --frozen PREVIOUS_OUT``) keeps of
  a previous run beyond its fitted artifact (``Freeze``): ``finalize(previous, cfg, artifact)``
  turns the columns ``reads`` of the previous run's output of this stage (and its artifact, None
  when the stage has no fit) into the artifact ``apply`` is handed, e.g. SemDeDup's previous
  decisions, so new rows are compared with the rows the previous run kept
  (curate.engines.frozen says what every stage freezes).

Every function that takes a batch must accept an empty one (0 rows, the declared columns): a pool
may hold empty shards, and Spark hands empty batches to its tasks. The engines check the contract
on every call: ``apply`` returns one row per input row and every declared column, a partial
returns its pass's columns (``checked_apply``, ``checked_partial``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from curate.errors import RecipeError

Batch = pa.Table
Artifact = pa.Table | None


@dataclass(frozen=True)
class Pass:
    """One pass of a fit over the whole pool."""
    name: str
    schema: pa.Schema                                  # partial's columns: keys, then int64 sums
    keys: tuple[str, ...]
    partial: Callable[[Batch, Any, Artifact], pa.Table]      # (batch, cfg, previous pass's artifact)
    finalize: Callable[[pa.Table, Any, Artifact], pa.Table]  # (merged, cfg, previous) -> this pass's artifact
    having: Callable[[Any], str | None] | None = None        # (cfg) -> SQL predicate over the merged rows

    def sums(self) -> list[str]:
        return [name for name in self.schema.names if name not in self.keys]


@dataclass(frozen=True)
class Fit:
    passes: tuple[Pass, ...]


@dataclass(frozen=True)
class Freeze:
    """What a stage keeps of a previous run's output when a run is frozen against it."""
    reads: tuple[str, ...]                                   # columns of the previous run's output
    finalize: Callable[[pa.Table, Any, Artifact], pa.Table]  # (previous output, cfg, its artifact)


@dataclass(frozen=True)
class Stage:
    name: str
    config: type
    reads: Callable[[Any], tuple[str, ...]]
    adds: pa.Schema
    apply: Callable[[Batch, Any, Artifact], pa.Table]
    fit: Fit | None = None
    summary: str = ""
    check_inputs: Callable[[Any, dict[str, dict]], None] | None = None
    group_by: Callable[[Batch, Any, Artifact], pa.Array] | None = None
    describe: Callable[[Any], dict[str, Any]] | None = None
    max_workers: Callable[[Any], int] | None = None
    before: Callable[[Any], tuple[tuple[str, dict[str, Any]], ...]] | None = None
    artifact_name: str | None = None
    freeze: Freeze | None = None

    def freezable(self) -> bool:
        """Whether a frozen run has anything of a previous run to keep for this stage."""
        return self.fit is not None or self.freeze is not None

    def input_columns(self, table: pa.Table, cfg: Any) -> pa.Table:
        """The columns the stage's functions see: ``reads(cfg)``, ``dir:column`` reads as ``column``."""
        return table.select([spec.rpartition(":")[2] for spec in self.reads(cfg)])

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("uid", pa.string(), nullable=False), *self.adds])

    def checked_apply(self, table: pa.Table, cfg: Any, artifact: Artifact) -> pa.Table:
        """``apply`` on a batch, held to the contract: same rows, exactly the declared columns."""
        added = self.apply(self.input_columns(table, cfg), cfg, artifact)
        if added.num_rows != table.num_rows:
            raise RuntimeError(f"stage {self.name}: apply returned {added.num_rows} rows for {table.num_rows}")
        missing = [name for name in self.adds.names if name not in added.column_names]
        if missing:
            raise RuntimeError(f"stage {self.name}: apply did not return its declared column(s) {missing}")
        added = added.select(self.adds.names).cast(self.adds)
        return pa.Table.from_arrays([table.column("uid"), *added.columns], schema=self.output_schema())

    def checked_partial(self, number: int, table: pa.Table, cfg: Any, previous: Artifact) -> pa.Table:
        """Pass ``number``'s partial on a batch, held to the pass's declared columns."""
        step = self.fit.passes[number]
        result = step.partial(self.input_columns(table, cfg), cfg, previous)
        if sorted(result.column_names) != sorted(step.schema.names):
            raise RuntimeError(f"stage {self.name}: partial of fit pass {step.name!r} returned columns "
                               f"{result.column_names}, declared {step.schema.names}")
        return result.select(step.schema.names).cast(step.schema)


def file_field(default: Any = None) -> Any:
    """A config field naming a file the stage reads (a metadata list, target embeddings, a table):
    the file's content is part of the stage's fingerprint (curate.fingerprint)."""
    return dataclasses.field(default=default, metadata={"file": True})


def config_files(cfg: Any) -> dict[str, str]:
    """The config's ``file_field`` values that are set: field name -> the path as given."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("file") and getattr(cfg, f.name) is not None}


def make_config(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a stage config from recipe values; unknown keys and wrong types are errors."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping of settings, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    coerced = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    try:
        return cls(**coerced)
    except RecipeError as error:  # the config's own checks (__post_init__)
        raise RecipeError(f"{where}: {error}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise RecipeError(f"{where}: must not be null")
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    raise RecipeError(f"{where}: expected {hint}, got {value!r}")


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
