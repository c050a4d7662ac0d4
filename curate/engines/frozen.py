"""Incremental curation: a run frozen against a previous run's fitted statistics
(``curate run RECIPE --pool POOL --out OUT --frozen PREVIOUS_OUT``), on both engines.

A frozen stage skips its fit. Its artifact is the previous run's (PREVIOUS_OUT/<stage>/
_artifact.parquet), passed through the stage's ``freeze`` hook when it has one (contract.Freeze),
and ``apply`` decides every row of the grown pool with it. ``apply`` is a pure function of a row
and the artifact, so the rows the previous run saw get the decisions they got then, and the new
rows are decided by the same statistics. What that means per stage is in README.md
("Incremental curation"); in short, frozen are: MetaCLIP's entry counts (a new caption of entry
e is kept with the previous p[e]; an entry the previous pool never matched has p = 1), the
worldwide per-language counts and t, the CLIP-score threshold, ALIGN's over-shared captions, the
k-means centroids of cluster, image_based and dbp; SemDeDup keeps the previous decisions and
compares each new row with the previously kept rows of its cluster (and earlier new rows); DBP
keeps each cluster's previous cut-off distance instead of its quota.

Rules (decided here; the issue left them open):
- the recipe must curate as the previous run did: every stage both runs have must have the same
  config and description (model, metadata digest). A difference is a RecipeError naming the stage
  and the keys, raised before any stage runs (``check_frozen_run``), because statistics fitted
  under other settings (another model's score scale, another list's entry ids) mean nothing;
- a stage with something to freeze that the previous run has complete is frozen; one it lacks is
  fitted on this pool, and the log and manifest say so;
- the manifest's ``fit`` says which (``{"mode": "frozen", "from": ..., "fingerprint": ...}`` or
  ``{"mode": "fitted"}``), and the fingerprint includes the previous stage's fingerprint, so a
  frozen run and a refitted one never share a stage directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract import Stage, config_dict
from curate.errors import RecipeError
from curate.runio import read_manifest

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples are lists), so settings compare as the manifest stores them."""
    return json.loads(json.dumps(value, default=str))


def setting_differences(stage: Stage, cfg: Any, description: dict | None, manifest: dict) -> list[str]:
    """The config keys and description facts where this run's stage differs from the manifest's."""
    ours, theirs = _plain(config_dict(cfg)), manifest.get("config") or {}
    found = [f"{key}: {theirs.get(key)!r} there, {value!r} here" for key, value in ours.items()
             if theirs.get(key) != value]
    for key, value in _plain(description or {}).items():
        if manifest.get(key) != value:
            found.append(f"{key}: {manifest.get(key)!r} there, {value!r} here")
    return found


def check_frozen_run(stages: list[tuple[Stage, Any]], root: Path) -> None:
    """Before any stage runs: ``root`` is a run directory, and every stage it ran is set alike."""
    root = Path(root)
    if not (root / RUN_FILE).is_file():
        raise RecipeError(f"--frozen {root}: not a run directory (no {RUN_FILE}); give the --out of an earlier "
                          f"`curate run`")
    problems = []
    for stage, cfg in stages:
        manifest = read_manifest(root / stage.name)
        if manifest is None or manifest.get("status") != "complete":
            continue
        description = stage.describe(cfg) if stage.describe is not None else None
        problems += [f"{stage.name}.{difference}" for difference in setting_differences(stage, cfg, description, manifest)]
    if problems:
        raise RecipeError(f"--frozen {root}: this recipe curates differently from that run ({'; '.join(problems[:6])}); "
                          f"statistics fitted under other settings do not apply: set the recipe back, or run "
                          f"without --frozen to refit")


def frozen_source(stage: Stage, cfg: Any, description: dict | None, root: Path) -> tuple[Path | None, dict | None]:
    """(PREVIOUS_OUT/<stage>, its manifest) when this stage is frozen against it, else (None, None)."""
    if not stage.freezable():
        return None, None
    directory = Path(root) / stage.name
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("status") != "complete":
        log.info("%s: %s has no complete %s output; fitting it on this pool", stage.name, root, stage.name)
        return None, None
    differences = setting_differences(stage, cfg, description, manifest)
    if differences:
        raise RecipeError(f"--frozen {root}: stage {stage.name} is set differently there ({'; '.join(differences)})")
    return directory, manifest


def frozen_artifact(stage: Stage, cfg: Any, source: Path, artifact_file: str) -> pa.Table | None:
    """The artifact a frozen stage applies: the previous run's, through the stage's freeze hook."""
    path = source / artifact_file
    artifact = pq.read_table(path) if path.exists() else None
    if stage.fit is not None and artifact is None:
        raise RecipeError(f"--frozen: {path} is missing; that run's {stage.name} output is incomplete")
    if stage.freeze is None:
        return artifact
    parts = sorted(source.glob("part-*.parquet"))
    if not parts:
        raise RecipeError(f"--frozen: {source} has no part files; that run's {stage.name} output is incomplete")
    previous = pa.concat_tables([pq.read_table(part, columns=list(stage.freeze.reads)) for part in parts])
    return stage.freeze.finalize(previous, cfg, artifact)


def fit_field(stage: Stage, source: Path | None, manifest: dict | None) -> dict | None:
    """The manifest's ``fit``: how this stage's statistics were obtained."""
    if not stage.freezable():
        return None
    if source is None:
        return {"mode": "fitted"}
    return {"mode": "frozen", "from": str(source), "fingerprint": manifest["fingerprint"]}
