"""`curate evaluate`: two tiny candidates trained for a few steps with open_clip_train, checked
against CLIP_benchmark's own metric functions on the same checkpoints; summary statistics by hand;
random baselines of the candidates' sizes (identical on both engines); resume; bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from curate.cli import main
from curate.demo.tasks import write_demo_tasks
from curate.engines import open_session
from curate.errors import RecipeError
from curate.models import clip as models
from curate.pipeline import run_recipe
from curate.recipe import parse_recipe
from curate.runio import read_json
from curate.steps import evaluate as evaluate_step
from curate.steps import zeroshot
from tests.helpers import good_rows, write_image_pool

ARGS = ["--seeds", "2", "--samples-seen", "64", "--batch-size", "32"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 240-row image pool, two candidate runs (random 60% and 40% by the sample stage), tiny tasks."""
    work = tmp_path_factory.mktemp("evaluate")
    pool = write_image_pool(work / "pool", [good_rows(120), good_rows(120, 120)])
    runs = []
    for name, seed, share in (("wide", 0, 0.6), ("narrow", 1, 0.4)):
        recipe = parse_recipe({"seed": seed, "stages": {"sample": {}}, "select": f"sample_u < {share}"}, name)
        run_recipe(recipe, pool, work / name, workers=1)
        runs.append(work / name)
    write_demo_tasks(work / "tasks", scale=0.1)
    return work, pool, runs


def clip_benchmark_metrics(checkpoint, tasks) -> dict[tuple[str, str], float]:
    """CLIP_benchmark's functions directly: its classifier, its classification loop and sklearn's
    balanced accuracy, its retrieval evaluate."""
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification as zc
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    from sklearn.metrics import balanced_accuracy_score

    loaded = models.load_model("curate-tiny-vit", str(checkpoint), "cpu")
    found = {}
    for name, directory in tasks.items():
        retrieval = zeroshot.task_type(directory) == "retrieval"
        dataset = build_dataset(f"wds/{name}", root=str(directory), transform=loaded.preprocess, split="test",
                                download=False, task="zeroshot_retrieval" if retrieval else "zeroshot_classification")
        loader = torch.utils.data.DataLoader(dataset, batch_size=16,
                                             collate_fn=image_captions_collate_fn if retrieval else None)
        if retrieval:
            metrics = zr.evaluate(loaded.model, loader, loaded.tokenizer, "cpu", amp=False, recall_k_list=[1, 5])
            found[(name, "mean_recall@1")] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
        else:
            classifier = zc.zero_shot_classifier(loaded.model, loaded.tokenizer, dataset.classes, dataset.templates,
                                                 "cpu", amp=False)
            logits, target = zc.run_classification(loaded.model, classifier, loader, "cpu", amp=False)
            found[(name, "acc1")] = float((logits.argmax(1) == target).float().mean())
            metrics = {"mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(1))}
        found.update({(name, key): value for key, value in metrics.items()})
    return found


@pytest.mark.slow
def test_two_candidates_against_clip_benchmark_and_random_baselines(world, capsys, monkeypatch):
    work, pool, (wide, narrow) = world
    out = work / "eval"
    assert main(["evaluate", str(wide), str(narrow), "--tasks", str(work / "tasks"), "--out", str(out),
                 "--baseline", "random", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "wide - random[wide]: average" in printed and "95% CI" in printed
    results = pl.read_parquet(out / "results.parquet")
    assert sorted(results["candidate"].unique()) == ["narrow", "random[narrow]", "random[wide]", "wide"]
    tasks = zeroshot.find_tasks(work / "tasks")
    assert results.filter(pl.col("main")).height == 4 * 2 * len(tasks)
    # every candidate's metrics are CLIP_benchmark's on the same checkpoint
    for name in ("wide", "random[narrow]"):
        checkpoint = out / "train" / evaluate_step.safe(name) / "seed1" / "model.pt"
        expected = clip_benchmark_metrics(checkpoint, tasks)
        mine = results.filter((pl.col("candidate") == name) & (pl.col("seed") == 1))
        for row in mine.iter_rows(named=True):
            if (row["task"], row["metric"]) in expected and not np.isnan(row["value"]):
                assert row["value"] == pytest.approx(expected[(row["task"], row["metric"])], abs=1e-6), row
    # random baselines have the candidates' sizes, and another subset per seed
    for run, name in ((wide, "wide"), (narrow, "narrow")):
        size = len(np.load(run / "subset.npy"))
        subsets = [np.load(out / "baselines" / f"random-{name}" / f"seed{s}" / "subset.npy") for s in (0, 1)]
        assert [len(s) for s in subsets] == [size, size] and not np.array_equal(*subsets)
    # the summary: mean and std over seeds, the average of main metrics, the paired 95% interval
    from scipy import stats

    summary = read_json(out / "summary.json")
    averages = {name: [results.filter((pl.col("candidate") == name) & pl.col("main") & (pl.col("seed") == s))["value"]
                       .mean() for s in (0, 1)] for name in ("wide", "random[wide]")}
    assert summary["candidates"]["wide"]["average"]["mean"] == pytest.approx(np.mean(averages["wide"]), abs=1e-4)
    assert summary["candidates"]["wide"]["average"]["std"] == pytest.approx(np.std(averages["wide"], ddof=1), abs=1e-4)
    differences = np.subtract(averages["wide"], averages["random[wide]"])
    half = stats.t.ppf(0.975, 1) * differences.std(ddof=1) / np.sqrt(2)
    comparison = next(c for c in summary["comparisons"] if c["candidate"] == "wide" and c["baseline"] == "random[wide]")
    assert comparison["ci95"] == pytest.approx([differences.mean() - half, differences.mean() + half], abs=1e-4)
    assert summary["candidates"]["narrow"]["samples"] == [len(np.load(narrow / "subset.npy"))]
    assert "<h2>Evaluation</h2>" in (out / "report.html").read_text()
    # a second run resumes: nothing is trained or evaluated again
    monkeypatch.setattr(evaluate_step, "train_open_clip", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(zeroshot, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated again"))
    assert main(["evaluate", str(wide), str(narrow), "--tasks", str(work / "tasks"), "--out", str(out),
                 "--baseline", "random", *ARGS]) == 0
    assert pl.read_parquet(out / "results.parquet").equals(results)
    monkeypatch.undo()
    # a checkpoint that does not load is named
    broken = out / "train" / "wide" / "seed0"
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    (broken / "metrics.json").unlink()
    assert main(["evaluate", str(wide), "--tasks", str(work / "tasks"), "--out", str(out), "--baseline", "none",
                 *ARGS]) == 2
    assert str(broken / "model.pt") in capsys.readouterr().err


def test_bad_input_is_named(world, tmp_path, capsys):
    work, pool, (wide, _) = world
    assert main(["evaluate", str(pool), "--tasks", str(work / "tasks"), "--out", str(tmp_path / "e")]) == 2
    assert "no subset.npy" in capsys.readouterr().err
    broken = tmp_path / "tasks" / "shapes"
    (broken / "test").mkdir(parents=True)
    (broken / "test" / "nshards.txt").write_text("1\n")
    with pytest.raises(RecipeError, match=r"missing \['test/0.tar', 'classnames.txt'"):
        zeroshot.find_tasks(tmp_path / "tasks")
    assert main(["evaluate", str(wide), "--tasks", str(work / "tasks"), "--out", str(tmp_path / "e"),
                 "--batch-size", "512", "--samples-seen", "1024", "--baseline", "none"]) == 2
    assert "fewer than one batch (512)" in capsys.readouterr().err


def test_task_names_and_main_metrics():
    from pathlib import Path

    assert zeroshot.task_name(Path("wds_vtab-caltech101_test")) == "vtab/caltech101"
    assert zeroshot.task_name(Path("shapes")) == "shapes"
    assert zeroshot.main_metric("vtab/caltech101", "classification") == ("mean_per_class_recall", True)
    assert zeroshot.main_metric("retrieval/flickr_1k_test_image_text_retrieval", "retrieval") == ("mean_recall@1", True)
    assert zeroshot.main_metric("wilds/fmow", "classification") == ("acc1", False)
    assert zeroshot.main_metric("imagenet1k", "classification") == ("acc1", True)
    rows = evaluate_step.training_rows(["a", "b", "c", "x"], {"a": 1, "b": 1, "c": 1}, 7, seed=0)
    assert len(rows) == 7 and set(rows) == {0, 1, 2} and sorted(rows[:3]) == [0, 1, 2]  # whole passes, then repeats


@pytest.mark.spark
def test_random_baselines_are_identical_on_both_engines(world, tmp_path, spark):
    work, pool, (wide, _) = world
    candidates = evaluate_step.candidate_runs([wide])
    subsets = {}
    for engine in ("local", "spark"):
        with open_session(engine, workers=2, spark=spark if engine == "spark" else None) as session:
            made = evaluate_step.baseline_runs(candidates, tmp_path / engine, 3, ("random", "no_filter"), session)
        subsets[engine] = [(c.name, (c.run_dir / "subset.npy").read_bytes()) for c in made]
    assert subsets["local"] == subsets["spark"] and len(subsets["local"]) == 2
