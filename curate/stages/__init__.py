"""The stages that ship with curate: stage name -> the module that defines ``STAGE``.

An explicit table rather than registration by import side effect; a stage module is imported
only when a recipe or command names it (so heavy dependencies load on demand). Engines never use
this table: they are handed ``Stage`` values. Stages do not import each other; what two stages
share is a kernel (curate.kernels).
"""

from __future__ import annotations

import importlib

from curate.contract import Stage
from curate.errors import RecipeError

STAGE_MODULES = {
    "basic": "curate.stages.basic",
    "laion2b": "curate.stages.laion2b",
    "align": "curate.stages.align",
    "embed": "curate.stages.embed",
    "score": "curate.stages.score",
    "text_based": "curate.stages.text_based",
    "image_based": "curate.stages.image_based",
    "metaclip_match": "curate.stages.metaclip_match",
    "metaclip": "curate.stages.metaclip",
    "metaclip_worldwide_match": "curate.stages.metaclip_worldwide_match",
    "metaclip_worldwide": "curate.stages.metaclip_worldwide",
    "cluster": "curate.stages.cluster",
    "semdedup": "curate.stages.semdedup",
    "dbp": "curate.stages.dbp",
    "sample": "curate.stages.sample",
}


def get_stage(name: str) -> Stage:
    if name not in STAGE_MODULES:
        raise RecipeError(f"unknown stage {name!r}; known stages: {sorted(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[name]).STAGE
