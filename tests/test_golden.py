"""Golden subsets: every DataComp baseline recipe (and filters.yaml) on a generated DataComp-format
pool gives exactly the subset.npy recorded in tests/golden/ (written by the code before the
stages/kernels/engines restructuring; `make golden` rewrites them, reviewed as a diff)."""

import pytest

from tests.golden_runs import GOLDEN_DIR, RECIPES, run_all


@pytest.mark.slow
def test_every_baseline_recipe_gives_the_golden_subset(tmp_path):
    outputs = run_all(tmp_path)
    assert sorted(outputs) == sorted(RECIPES)
    for name, path in outputs.items():
        assert path.read_bytes() == (GOLDEN_DIR / f"{name}.npy").read_bytes(), name
