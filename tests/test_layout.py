"""The package keeps its shape: modules under 300 lines and functions under 50 (STYLE.md), no
stage behind a lambda, every shipped stage a picklable value."""

import ast
import pickle
from pathlib import Path

import pytest

from curate.stages import STAGE_MODULES, get_stage

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "curate").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    assert text.count("\n") <= 300, f"{path}: {text.count(chr(10))} lines (two ideas in one file?)"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50]
    assert not long, f"{path}: functions over 50 lines: {long}"


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_every_stage_pickles_by_reference(name):
    stage = get_stage(name)
    again = pickle.loads(pickle.dumps(stage))
    assert again == stage and again.apply is stage.apply
