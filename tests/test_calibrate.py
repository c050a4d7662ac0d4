"""`curate calibrate`: its curves are the stages' own rules, on the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from curate.cli import main
from curate.errors import RecipeError
from curate.steps import calibrate
from tests.helpers import planted_embeddings, run, table, write_embedding_pool


@pytest.fixture
def clustered(tmp_path):
    pool = write_embedding_pool(tmp_path / "pool", [150, 150], planted_embeddings(300, dim=8, centres=3,
                                                                                duplicates=60, seed=3))
    run("cluster", pool, tmp_path / "out", embeddings="b32", clusters=4)
    return pool, tmp_path / "out"


def test_semdedup_curve_is_what_the_stage_keeps(clustered, tmp_path):
    pool, out = clustered
    result = calibrate.semdedup_curve(out, pool)
    assert result["rows"] == 300 and result["clusters"] == 4
    kept = [row["kept"] for row in result["eps"]]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]  # a larger eps never keeps more
    def kept_by_the_stage(**values) -> float:  # the semdedup stage itself, on the same clusters
        run("semdedup", pool, out, embeddings="b32", **values)
        return float(np.mean(table(out, "semdedup").column("semdedup_keep").to_numpy(zero_copy_only=False)))

    for eps in (0.001, 0.07):
        assert next(row["kept"] for row in result["eps"] if row["eps"] == eps) == pytest.approx(
            kept_by_the_stage(eps=eps), abs=1e-4)
    assert next(row["kept"] for row in result["relative_eps"] if row["relative_eps"] == 0.1) == pytest.approx(
        kept_by_the_stage(eps=None, relative_eps=0.1), abs=1e-4)
    assert (out / "_calibrate_semdedup.json").is_file()


def test_score_curve_thresholds_are_the_score_stages(clustered, tmp_path, capsys):
    pool, out = clustered
    run("score", pool, out, embeddings="b32", score_column=None, fraction=0.3)
    assert main(["calibrate", "score", str(out), "--pool", str(pool)]) in (0, None)
    printed = capsys.readouterr().out
    assert "fraction  threshold" in printed
    result = calibrate.score_curve(out, pool)
    scores = table(out, "score")
    kept = scores.filter(scores.column("score_keep")).column("score_clip").to_numpy()
    assert next(r["threshold"] for r in result["by_fraction"] if r["fraction"] == 0.3) == pytest.approx(kept.min())
    assert result["rows"] == result["scored"] == 300


def test_calibrate_needs_a_cluster_stage(tmp_path):
    with pytest.raises(RecipeError, match="no complete cluster stage"):
        calibrate.semdedup_curve(tmp_path, tmp_path)
