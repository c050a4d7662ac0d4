"""The stage list: stage name -> module that defines ``STAGE``.

An explicit table rather than registration by import side effect; a stage module is
imported only when a recipe or command names it (so heavy dependencies load on demand).
"""

from __future__ import annotations

import importlib

from curate.stage import RecipeError, Stage

STAGE_MODULES = {
    "basic": "curate.basic",
    "laion2b": "curate.laion2b",
    "align": "curate.align",
    "embed": "curate.embed",
    "score": "curate.score",
    "text_based": "curate.text_based",
    "image_based": "curate.image_based",
    "metaclip": "curate.metaclip",
    "cluster": "curate.cluster",
    "semdedup": "curate.semdedup",
    "dbp": "curate.dbp",
}


def get_stage(name: str) -> Stage:
    if name not in STAGE_MODULES:
        raise RecipeError(f"unknown stage {name!r}; known stages: {sorted(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[name]).STAGE
