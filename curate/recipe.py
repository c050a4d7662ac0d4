"""Recipes: which stages run, with which configs, and which rows the subset selects.

    # jobs/recipes/demo.yaml
    seed: 0                       # uid-hashed randomness of every sampling stage
    stages:                       # run in this order; {} = the paper's defaults
      basic: {}
      align: {max_images_per_text: 10}
    select: "status = 'success' AND basic_keep AND align_keep"

``select`` is a SQL boolean expression over pool columns and stage columns, evaluated by
polars locally and by Spark SQL on Spark (NULL is not selected). Unknown top-level keys,
unknown stages and unknown stage keys are errors. Overrides ``--set stage.key=value``,
``--set select=...`` and ``--set seed=N`` are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from curate.contract import RecipeError, config_dict, make_config
from curate.stages import get_stage

TOP_LEVEL_KEYS = ("description", "seed", "stages", "select")


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[tuple[str, Any], ...]
    select: str
    seed: int = 0
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "seed": self.seed, "select": self.select,
                "stages": {name: config_dict(cfg) for name, cfg in self.stages}}


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read recipe ({error})") from error
    if not isinstance(mapping, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with keys {list(TOP_LEVEL_KEYS)}")
    return parse_recipe(mapping, path.stem, overrides, where=str(path))


def parse_recipe(mapping: dict[str, Any], name: str, overrides: list[str] = (), where: str = "recipe") -> Recipe:
    mapping = apply_overrides(mapping, overrides, where)
    unknown = sorted(set(mapping) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}")
    if not mapping.get("select"):
        raise RecipeError(f"{where}: 'select' (the subset's boolean expression) is required")
    seed = mapping.get("seed", 0)
    if not isinstance(seed, int):
        raise RecipeError(f"{where}: seed must be an integer, got {seed!r}")
    stages = []
    for stage_name, values in (mapping.get("stages") or {}).items():
        stage = get_stage(stage_name)
        values = dict(values or {})
        if "seed" in {f.name for f in dataclasses.fields(stage.config)}:
            values.setdefault("seed", seed)
        stages.append((stage_name, make_config(stage.config, values, f"{where}: stages.{stage_name}")))
    return Recipe(name=name, stages=tuple(stages), select=str(mapping["select"]), seed=seed,
                  description=str(mapping.get("description", "")))


def apply_overrides(mapping: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    mapping = {**mapping, "stages": {k: dict(v or {}) for k, v in (mapping.get("stages") or {}).items()}}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise RecipeError(f"--set {override!r}: expected key=value, e.g. basic.min_side=300")
        value = yaml.safe_load(raw) if raw else ""
        if key in ("select", "seed", "description"):
            mapping[key] = raw if key == "select" else value
            continue
        stage_name, dot, field = key.partition(".")
        if not dot or not field:
            raise RecipeError(f"--set {override!r}: expected stage.key=value, select=... or seed=...")
        if stage_name not in mapping["stages"]:
            raise RecipeError(f"--set {override!r}: stage {stage_name!r} is not in {where} "
                              f"(its stages: {list(mapping['stages'])})")
        mapping["stages"][stage_name][field] = value
    return mapping
