"""The score stage: exact global fraction threshold (DESIGN.md 4.1) against a plain numpy sort,
edge cases, bad embeddings, refusals, and local == Spark."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.demo.synthetic import write_datacomp_pool
from curate.errors import RecipeError
from curate.kernels.embeddings import decode, encode
from curate.kernels.quantile import key_value, order_keys
from curate.stages.score import STAGE, ScoreConfig, apply, choose_bucket
from curate.steps.datacomp import import_datacomp
from tests.helpers import config, fit_in_memory


def numpy_keep(values: np.ndarray, fraction: float) -> np.ndarray:
    """DESIGN.md 4.1 as DataComp computes it: -np.sort(-scores)[int(N * f)], keep >= (NaN never)."""
    values = np.asarray(values, dtype=np.float32)
    index = int(len(values) * fraction)
    if index >= len(values):  # our decision for f = 1 / empty: every scored row
        return ~np.isnan(values)
    threshold = -np.sort(-values)[index]
    with np.errstate(invalid="ignore"):
        return values >= threshold


def fit_and_apply(values: np.ndarray, fraction: float, batches: int = 3) -> np.ndarray:
    """The stage's two passes as an engine runs them, over ``batches`` slices."""
    cfg = ScoreConfig(score_column="s", fraction=fraction)
    table = pa.table({"s": pa.array(values, pa.float32())})
    size = max(1, -(-len(values) // batches))
    parts = [table.slice(start, size) for start in range(0, max(len(values), 1), size)]
    artifact = fit_in_memory(STAGE, cfg, parts)
    return apply(table, cfg, artifact).column("score_keep").to_numpy(zero_copy_only=False)


def draw(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.2, 0.1, n)
    if kind == "ties":
        return rng.integers(-3, 4, n) / 4  # many ties, 0.0 included
    if kind == "specials":
        return rng.choice([0.0, -0.0, 1e-45, -1e-45, np.inf, -np.inf, 0.25, 3.4e38], n)
    if kind == "narrow":
        return 0.3 + rng.integers(0, 5, n) * np.finfo(np.float32).eps  # neighbours in one bucket
    return np.where(rng.random(n) < 0.3, np.nan, rng.normal(0, 1, n))


@pytest.mark.parametrize("kind", ["normal", "ties", "specials", "narrow", "nan"])
def test_fraction_threshold_equals_a_numpy_sort(kind):
    rng = np.random.default_rng(["normal", "ties", "specials", "narrow", "nan"].index(kind))
    for _ in range(40):
        n = int(rng.integers(0, 300))
        values = draw(kind, rng, n).astype(np.float32)
        for fraction in (0.0, 0.1, 0.3, 0.5, 0.9, 1.0, float(rng.random())):
            assert np.array_equal(fit_and_apply(values, fraction), numpy_keep(values, fraction)), (kind, n, fraction)


def test_edge_cases_by_hand():
    values = np.array([0.5, 0.5, 0.1, -0.0, 0.0, 0.9, 0.9, 0.9, 0.2, 0.3], np.float32)
    assert fit_and_apply(values, 0.0).tolist() == [v == np.float32(0.9) for v in values]  # index 0: the max, ties kept
    assert fit_and_apply(values, 0.25).sum() == 3     # index int(2.5) = 2: still 0.9
    assert fit_and_apply(values, 0.3).sum() == 5      # index int(3.0000000000000004) = 3: 0.5, both kept
    assert fit_and_apply(values, 0.9).sum() == 10     # index 9 is -0.0 or 0.0: equal, both kept
    assert fit_and_apply(values, 1.0).all()           # index N is out of range: every score kept
    with_nan = np.array([0.4, np.nan, np.nan, 0.1], np.float32)  # N counts the NaN rows; NaN sorts last
    assert fit_and_apply(with_nan, 0.25).tolist() == [True, False, False, True]  # index 1 = 0.1
    assert not fit_and_apply(with_nan, 0.5).any()                                 # index 2 is NaN: none
    assert fit_and_apply(with_nan, 1.0).tolist() == [True, False, False, True]
    assert fit_and_apply(np.array([], np.float32), 0.3).tolist() == []


def test_order_keys_sort_like_floats_and_invert():
    values = np.array([-np.inf, -3.4e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 0.25, 1.0, np.inf], np.float32)
    keys = order_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0) and keys[4] == keys[5]
    assert [key_value(int(k)) for k in keys] == [v + np.float32(0.0) for v in values]


def test_config_needs_exactly_one_source_and_one_rule():
    with pytest.raises(RecipeError, match="exactly one of embeddings"):
        ScoreConfig(embeddings="b32")
    with pytest.raises(RecipeError, match="exactly one of fraction and threshold"):
        ScoreConfig(threshold=0.3)
    with pytest.raises(RecipeError, match="within"):
        ScoreConfig(fraction=1.5)


@pytest.fixture(scope="module")
def bad_embedding_pool(tmp_path_factory) -> Path:
    """A DataComp-format pool whose B/32 sidecar has null, NaN, Inf and zero rows in shard 0."""
    work = tmp_path_factory.mktemp("score")
    pool = work / "pool"
    import_datacomp(write_datacomp_pool(work / "src", shards=3, rows_per_shard=200, seed=3, models=("b32",)), pool)
    path = pool / "embeddings" / "b32" / "part-00000.parquet"
    table = pq.read_table(path)
    image = decode(table.column("image_emb")).astype(np.float32)
    image[1, 5], image[2, :] = np.nan, 0.0
    text = decode(table.column("text_emb")).astype(np.float32)
    text[3, 0] = np.inf
    valid = np.ones(len(image), dtype=bool)
    valid[4] = False
    table = table.set_column(1, "image_emb", encode(image, valid)).set_column(2, "text_emb", encode(text))
    pq.write_table(table, path)
    return pool


def run_score(pool: Path, out: Path, engine: str = "local", spark=None, **values):
    pipeline.run_stage("score", config("score", **values), pool, out, engine=engine, workers=1, spark=spark)
    return pq.read_table(sorted((out / "score").glob("part-*.parquet"))).sort_by("uid")


def sidecar_cosines(pool: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(sorted((pool / "embeddings" / "b32").glob("part-*.parquet"))).sort_by("uid")
    image, text = (decode(table.column(c)).astype(np.float64) for c in ("image_emb", "text_emb"))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
    return table.column("uid").to_pylist(), cos


def test_bad_embeddings_get_a_reason_and_are_never_selected(bad_embedding_pool, tmp_path):
    out = run_score(bad_embedding_pool, tmp_path / "out", embeddings="b32", score_column=None, fraction=0.5)
    reasons = dict(zip(out.column("uid").to_pylist(), out.column("score_reason").to_pylist()))
    first = pq.read_table(bad_embedding_pool / "00000000.parquet").column("uid").to_pylist()
    assert [reasons[first[i]] for i in range(1, 5)] == ["non_finite", "zero_norm", "non_finite", "no_embedding"]
    uids, cos = sidecar_cosines(bad_embedding_pool)
    assert out.column("uid").to_pylist() == uids
    clip = out.column("score_clip").to_numpy()
    assert np.array_equal(np.isnan(clip), np.isnan(cos)) and np.nanmax(np.abs(clip - cos)) < 1e-5
    assert np.array_equal(out.column("score_keep").to_numpy(zero_copy_only=False), numpy_keep(clip, 0.5))
    assert out.column("score_clip").type == pa.float32()


def test_threshold_compares_in_float32(bad_embedding_pool, tmp_path):
    out = run_score(bad_embedding_pool, tmp_path / "out", fraction=None, threshold=0.25,
                    score_column="clip_b32_similarity_score")
    pool = pq.read_table(sorted(bad_embedding_pool.glob("*.parquet"))).sort_by("uid")
    scores = pool.column("clip_b32_similarity_score").to_numpy()
    assert np.array_equal(out.column("score_keep").to_numpy(zero_copy_only=False), scores >= np.float32(0.25))


def test_embeddings_of_another_model_or_dimension_are_refused(bad_embedding_pool, tmp_path):
    with pytest.raises(RecipeError, match="made by 'ViT-B-32'"):
        run_score(bad_embedding_pool, tmp_path / "a", embeddings="b32", score_column=None, model="ViT-L-14")
    assert run_score(bad_embedding_pool, tmp_path / "b", embeddings="b32", score_column=None,
                     model="ViT-B-32").num_rows == 600
    table = pa.table({"image_emb": encode(np.ones((2, 4))), "text_emb": encode(np.ones((2, 6)))})
    with pytest.raises(RecipeError, match="dimension 4 but its text embeddings 6"):
        apply(table, ScoreConfig(embeddings="b32", score_column=None), _artifact(0.0))


def _artifact(threshold: float) -> pa.Table:
    cfg = ScoreConfig(score_column="s", fraction=None, threshold=threshold)
    return choose_bucket(pa.table({"bin": pa.array([], pa.int64()), "rows": pa.array([], pa.int64())}), cfg, None)


@pytest.mark.spark
def test_spark_score_equals_local(bad_embedding_pool, tmp_path, spark):
    values = {"embeddings": "b32", "score_column": None, "fraction": 0.3}
    local = run_score(bad_embedding_pool, tmp_path / "local", **values)
    on_spark = run_score(bad_embedding_pool, tmp_path / "spark", engine="spark", spark=spark, **values)
    assert on_spark.drop_columns(["score_clip"]).equals(local.drop_columns(["score_clip"]))
    clip = local.column("score_clip").to_numpy()
    assert np.array_equal(on_spark.column("score_clip").to_numpy(), clip, equal_nan=True) and np.isnan(clip).sum() == 4
    assert local.column("score_keep").to_numpy(zero_copy_only=False).sum() == int(600 * 0.3) + 1


def test_scores_this_runs_embed_stage_and_checks_its_model(bad_embedding_pool, tmp_path):
    """An `embed` stage output as curate.stages.embed writes it: plain binary float16 columns, the model
    at the top of its manifest (written here by hand, so no model has to run)."""
    from curate.runio import write_manifest

    out = tmp_path / "out"
    (out / "embed").mkdir(parents=True)
    for sidecar_path in sorted((bad_embedding_pool / "embeddings" / "b32").glob("part-*.parquet")):
        sidecar = pq.read_table(sidecar_path)
        pq.write_table(pa.table({"uid": sidecar.column("uid"),
                                 "embed_image": sidecar.column("image_emb").cast(pa.binary()),
                                 "embed_text": sidecar.column("text_emb").cast(pa.binary()),
                                 "embed_reason": pa.nulls(sidecar.num_rows, pa.string())}),
                       out / "embed" / sidecar_path.name)
    write_manifest(out / "embed", stage="embed", status="complete", layout="pool-shards", fingerprint="f",
                   columns=["embed_image", "embed_text", "embed_reason"], model="tiny-test-model", dim=512)
    with pytest.raises(RecipeError, match="made by 'tiny-test-model'"):
        run_score(bad_embedding_pool, out, embeddings="embed", score_column=None, model="ViT-B-32")
    scored = run_score(bad_embedding_pool, out, embeddings="embed", score_column=None, model="tiny-test-model")
    reference = run_score(bad_embedding_pool, tmp_path / "sidecar", embeddings="b32", score_column=None)
    assert scored.drop_columns(["score_clip"]).equals(reference.drop_columns(["score_clip"]))
