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

from curate.contract import Stage, config_dict, make_config
from curate.errors import RecipeError
from curate.stages import get_stage

TOP_LEVEL_KEYS = ("description", "seed", "stages", "select", "max_removed_share", "ground_truth_targets",
                  "random_weights")


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[tuple[Stage, Any], ...]   # in run order, with the stages each one needs first
    select: str
    seed: int = 0
    description: str = ""
    max_removed_share: float = 0.9       # a stage removing more of the pool is warned about (--strict: an error)
    ground_truth_targets: dict | None = None  # stage -> defects it should remove (curate.reports.truth)
    random_weights: bool = False          # consumers may use embeddings made with random weights

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage, _ in self.stages]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "seed": self.seed, "select": self.select,
                "max_removed_share": self.max_removed_share, "ground_truth_targets": self.ground_truth_targets,
                "random_weights": self.random_weights,
                "stages": {stage.name: config_dict(cfg) for stage, cfg in self.stages}}


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
    if not isinstance(mapping.get("stages") or {}, dict):
        raise RecipeError(f"{where}: 'stages' is a mapping of stage name -> settings (e.g. basic: {{}}), "
                          f"got {type(mapping['stages']).__name__}")
    mapping = apply_overrides(mapping, overrides, where)
    unknown = sorted(set(mapping) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}")
    if not isinstance(mapping.get("select"), str) or not mapping["select"].strip():
        raise RecipeError(f"{where}: 'select' (the subset's boolean expression, a string) is required")
    seed = mapping.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"{where}: seed must be an integer, got {seed!r}")
    share, targets, random = (mapping.get(key, default) for key, default in
                              (("max_removed_share", 0.9), ("ground_truth_targets", None), ("random_weights", False)))
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1:
        raise RecipeError(f"{where}: max_removed_share must be a number in (0, 1], got {share!r}")
    if targets is not None and not (isinstance(targets, dict) and all(isinstance(v, list) for v in targets.values())):
        raise RecipeError(f"{where}: ground_truth_targets maps a stage to a list of defect names")
    if not isinstance(random, bool):
        raise RecipeError(f"{where}: random_weights must be true or false, got {random!r}")
    shared = {"seed": seed, "random_weights_ok": random}
    stages: dict[str, tuple[Stage, Any]] = {}
    for stage_name, values in mapping["stages"].items():
        stage, cfg = configured(stage_name, values, shared, f"{where}: stages.{stage_name}")
        for needed, needed_values in (stage.before(cfg) if stage.before else ()):
            if needed not in stages:  # a stage the recipe lists itself keeps its own settings
                stages[needed] = configured(needed, needed_values, shared, f"{where}: stages.{stage_name} (needs {needed})")
        stages[stage_name] = (stage, cfg)
    return Recipe(name=name, stages=tuple(stages.values()), select=mapping["select"], seed=seed,
                  description=str(mapping.get("description", "")), max_removed_share=float(share),
                  ground_truth_targets=targets, random_weights=random)


def configured(stage_name: str, values: Any, shared: dict[str, Any], where: str) -> tuple[Stage, Any]:
    """The stage and its config from recipe values; the recipe-wide settings (``seed``,
    ``random_weights_ok``) fill the stage's fields of those names unless the stage sets them."""
    stage = get_stage(stage_name)
    values = dict(values or {}) if isinstance(values, dict) or values is None else values
    if isinstance(values, dict):
        fields = {f.name for f in dataclasses.fields(stage.config)}
        for key, value in shared.items():
            if key in fields:
                values.setdefault(key, value)
    return stage, make_config(stage.config, values, where)


def apply_overrides(mapping: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    stages = {k: (dict(v or {}) if isinstance(v, dict) or v is None else v) for k, v in (mapping.get("stages") or {}).items()}
    mapping = {**mapping, "stages": stages}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise RecipeError(f"--set {override!r}: expected key=value, e.g. basic.min_side=300")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            raise RecipeError(f"--set {override!r}: not a plain YAML value ({str(error).splitlines()[0]})") from None
        if key in ("select", "seed", "description", "max_removed_share", "random_weights"):
            mapping[key] = raw if key == "select" else value
            continue
        stage_name, dot, field = key.partition(".")
        if not dot or not field:
            raise RecipeError(f"--set {override!r}: expected stage.key=value, select=... or seed=...")
        if stage_name not in mapping["stages"]:
            raise RecipeError(f"--set {override!r}: stage {stage_name!r} is not in {where} "
                              f"(its stages: {list(mapping['stages'])})")
        if not isinstance(mapping["stages"][stage_name], dict):
            raise RecipeError(f"{where}: stages.{stage_name} must be a mapping of settings")
        mapping["stages"][stage_name][field] = value
    return mapping
