"""The stage contract (DESIGN.md section 3): stages annotate, only the subset step selects.

A stage is data, not a class hierarchy:

- ``config``: a frozen, keyword-only dataclass whose defaults are the paper's values;
- ``reads(cfg)``: the columns it needs, from the pool or from an earlier stage's output;
- ``adds``: the columns it writes, named ``<stage>_<what>``; the engine adds ``uid``;
- ``apply(table, cfg, artifact)``: a pure per-batch function, Arrow in, Arrow columns out,
  one output row per input row, no I/O. It must not depend on how rows are batched;
- ``fit`` (optional): a global statistic as partial -> merge -> finalize. ``partial`` maps a
  batch to a small table of key columns plus integer sum columns; every engine merges
  partials the same way (group by the keys, sum the rest), filters the merged table with
  the optional SQL predicate ``having(cfg)`` (so a large merged table never reaches one
  process), and ``finalize`` turns it into the artifact table handed to ``apply``.
  A fit of ``passes`` > 1 repeats this: pass k's partial and finalize receive pass k-1's
  artifact as ``previous`` (None on the first pass), e.g. a coarse then a fine histogram
  to find an exact quantile with memory independent of the pool size.
  ``partial_carry`` (optional) is the same partial that also returns per-row columns the
  apply can reuse instead of recomputing them, row-aligned with the batch and named
  ``_carry_<...>`` (e.g. MetaCLIP's matches: matching is the expensive part of both). The
  local engine keeps them in OUT/<stage>/_carry/ from the last fit pass to the apply and
  deletes them when the stage completes; ``apply`` sees them as extra input columns. They
  are an optimisation only: ``apply`` must give the same result without them (the Spark
  engine, or a partition whose carry file is missing).
- ``group_by`` (optional): per-group work (e.g. per k-means cluster). ``group_by(table, cfg,
  artifact)`` gives each input row's int64 group key (null: the row takes part in no group);
  ``apply`` is then called once per group with ALL of that group's rows (in no defined order),
  and with key-null rows in batches of any size. Local: curate.engines.groups (a bounded
  shuffle through files); Spark: ``groupBy(key).applyInArrow``.

- ``describe`` (optional): facts about the resolved config that a consumer must check (e.g.
  the embedding model, its weights and preprocessing). Evaluated once before the stage runs,
  merged into the top level of the stage's manifest and part of its fingerprint.
- ``max_workers`` (optional): the most processes the local engine runs the stage in (a model
  stage: one process per GPU, or one process using every core through torch threads).

Engines (curate/engines) know nothing about any particular stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa


CARRY_PREFIX = "_carry_"


class RecipeError(ValueError):
    """A bad recipe or stage configuration: unknown stage, unknown key, wrong type."""


@dataclass(frozen=True)
class Fit:
    partial: Callable[[pa.Table, Any, pa.Table | None], pa.Table]    # (batch, cfg, previous)
    keys: tuple[str, ...]
    finalize: Callable[[pa.Table, Any, pa.Table | None], pa.Table]   # (merged, cfg, previous)
    having: Callable[[Any], str | None] = lambda cfg: None
    passes: int = 1
    # (batch, cfg, previous) -> (partial, carried columns row-aligned with the batch)
    partial_carry: Callable[[pa.Table, Any, pa.Table | None], tuple[pa.Table, pa.Table]] | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    config: type
    reads: Callable[[Any], tuple[str, ...]]
    adds: pa.Schema
    apply: Callable[[pa.Table, Any, pa.Table | None], pa.Table]
    fit: Fit | None = None
    summary: str = ""
    check_inputs: Callable[[Any, dict[str, dict]], None] | None = None  # (cfg, source manifests)
    group_by: Callable[[pa.Table, Any, pa.Table | None], pa.Array] | None = None  # (inputs, cfg, artifact) -> key
    describe: Callable[[Any], dict[str, Any]] | None = None  # (cfg) -> fields merged into the manifest
    max_workers: Callable[[Any], int] | None = None          # (cfg) -> most local-engine processes
    artifact_name: str | None = None  # also publish the fitted artifact as OUT/<stage>/<this name>

    def input_columns(self, table: pa.Table, cfg: Any) -> pa.Table:
        """The columns ``apply`` sees: ``reads(cfg)``, with ``dir:column`` sidecar reads as
        ``column``, and any ``_carry_*`` columns the engine attached (see ``Fit.partial_carry``)."""
        carried = [name for name in table.column_names if name.startswith(CARRY_PREFIX)]
        return table.select([spec.rpartition(":")[2] for spec in self.reads(cfg)] + carried)

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("uid", pa.string(), nullable=False), *self.adds])

    def run_apply(self, table: pa.Table, cfg: Any, artifact: pa.Table | None) -> pa.Table:
        """Apply to a batch and check the contract: same rows, exactly the declared columns."""
        added = self.apply(self.input_columns(table, cfg), cfg, artifact)
        if added.num_rows != table.num_rows:
            raise RuntimeError(f"stage {self.name}: apply returned {added.num_rows} rows for {table.num_rows}")
        added = added.select(self.adds.names).cast(self.adds)
        return pa.Table.from_arrays([table.column("uid"), *added.columns], schema=self.output_schema())


def make_config(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a stage config from recipe values; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()})


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
