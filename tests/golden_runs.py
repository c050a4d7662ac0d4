"""The golden runs: every DataComp baseline recipe (and the model-free filters recipe) on a generated
DataComp-format pool, through the CLI only, so the same script measures any version of the code.

``make golden`` rewrites tests/golden/*.npy from the current code (review the diff);
tests/test_golden.py reruns them and compares subset.npy byte for byte.

    python -m tests.golden_runs WORK_DIR [--write tests/golden]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).parent / "golden"
# recipe file -> extra --set overrides (cluster counts scaled to a 1,200-row pool)
IMAGE_BASED = ["image_based.clusters=24"]
RECIPES = {
    "basic": [],
    "clip_score_b32_threshold_0.25": [],
    "clip_score_l14_30pct": [],
    "laion2b": [],
    "text_based": [],
    "no_filter": [],
    "image_based": IMAGE_BASED,
    "image_based_intersect_clip_score": IMAGE_BASED,
    "filters": ["metaclip.t=20"],
}


def make_pool(work: Path) -> tuple[Path, Path]:
    """The imported pool and a targets file (24 of the pool's own l14 image embeddings)."""
    from curate.cli import main
    from tests.helpers import datacomp_pool, write_targets

    source = datacomp_pool(work / "src")
    pool = work / "pool"
    assert main(["import-datacomp", "--src", str(source), "--out", str(pool)]) == 0
    return pool, write_targets(source, work / "targets.npy")


def run_all(work: Path) -> dict[str, Path]:
    from curate.cli import main

    pool, targets = make_pool(work)
    outputs = {}
    for name, overrides in RECIPES.items():
        sets = list(overrides) + ([f"image_based.targets={targets}"] if name.startswith("image_based") else [])
        out = work / "runs" / name
        args = ["run", f"jobs/recipes/{name}.yaml", "--pool", str(pool), "--out", str(out), "--workers", "2"]
        for value in sets:
            args += ["--set", value]
        assert main(args) == 0, name
        outputs[name] = out / "subset.npy"
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--write", type=Path, default=None, help="copy each subset.npy here as <recipe>.npy")
    args = parser.parse_args(argv)
    outputs = run_all(args.work)
    for name, path in outputs.items():
        print(f"{name}: {len(np.load(path))} samples")
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, args.write / f"{name}.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
