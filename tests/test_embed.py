"""The embed stage: normalised float16 embeddings, reasons for bad images, model checks,
checkpoints, batching independence, local == Spark, resume after a kill.

Tiny generated images and the tiny curate-tiny-vit architecture, random or saved weights: no
network, no downloaded weights.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.errors import RecipeError
from curate.kernels.embeddings import decode
from curate.models import clip as models
from curate.recipe import parse_recipe
from curate.runio import read_manifest
from curate.stages import embed
from tests.helpers import bad_rows, embed_config, embed_table, good_rows, write_image_pool

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory) -> Path:
    rows = good_rows(30)
    return write_image_pool(tmp_path_factory.mktemp("embed") / "pool", [rows[:12], bad_rows(), [], rows[12:]])




def run_embed(pool, out, engine="local", spark=None, **values) -> dict:
    return pipeline.run_stage("embed", embed_config(**values), pool, out, engine=engine, workers=2, spark=spark)




def test_embeddings_are_normalised_float16_with_a_reason_where_there_is_none(image_pool, tmp_path):
    manifest = run_embed(image_pool, tmp_path / "out")
    table = embed_table(tmp_path / "out")
    assert table.num_rows == 30 + len(bad_rows()) and manifest["partitions"] == 4
    assert manifest["model"] == "curate-tiny-vit" and manifest["dim"] == 64 and manifest["weights"] == "random"
    assert manifest["preprocess"]["image_size"] == [64, 64] and manifest["preprocess"]["resize_mode"] == "shortest"
    reasons = dict(zip(table.column("uid").to_pylist(), table.column("embed_reason").to_pylist()))
    for row in bad_rows():
        assert reasons[row["uid"]] == row["expect"], row["text"][:40]
    image, text = decode(table.column("embed_image")), decode(table.column("embed_text"))
    assert image.dtype == np.float16 and image.shape == (table.num_rows, 64)
    image_null = np.isnan(image).all(axis=1)
    text_null = np.isnan(text).all(axis=1)
    reason = np.array([r or "" for r in table.column("embed_reason").to_pylist()])
    assert np.array_equal(image_null, np.isin(reason, ["no_image", "decode_error", "tiny_image", "too_many_pixels"]))
    assert np.array_equal(text_null, reason == "no_text")
    for matrix, null in ((image, image_null), (text, text_null)):
        norms = np.linalg.norm(matrix[~null].astype(np.float32), axis=1)
        assert np.allclose(norms, 1.0, atol=2e-3)


def test_embeddings_do_not_depend_on_partitioning_or_threads(image_pool):
    table = pq.read_table(image_pool / "00000.parquet").select(["jpg", "text"])
    cfg = embed.EmbedConfig(pretrained="random", batch_size=8)
    whole = embed.apply(table, cfg, None)
    pieces = pa.concat_tables([embed.apply(table.slice(0, 5), embed.EmbedConfig(pretrained="random", batch_size=8, threads=1), None),
                               embed.apply(table.slice(5), embed.EmbedConfig(pretrained="random", batch_size=8, decode_threads=3), None)])
    assert pieces.equals(whole)  # every batch is padded to batch_size: bit-identical
    other = embed.apply(table, embed.EmbedConfig(pretrained="random", batch_size=3), None)
    assert np.allclose(decode(other.column("embed_image")).astype(np.float32),
                       decode(whole.column("embed_image")).astype(np.float32), atol=2e-3)


def test_a_pool_without_images_is_refused_clearly(tmp_path):
    from tests.helpers import write_pool

    pool = write_pool(tmp_path / "pool", [5])
    with pytest.raises(RecipeError, match="reads column 'jpg'"):
        run_embed(pool, tmp_path / "out")


def test_unknown_model_names_close_ones(image_pool, tmp_path):
    with pytest.raises(RecipeError, match=r"unknown open_clip model 'ViT-B-23'.*ViT-B-32"):
        run_embed(image_pool, tmp_path / "out", model="ViT-B-23")
    with pytest.raises(RecipeError, match="neither a checkpoint file nor a tag"):
        run_embed(image_pool, tmp_path / "out", pretrained="no-such-tag")
    with pytest.raises(RecipeError, match="does not exist"):
        run_embed(image_pool, tmp_path / "out", pretrained=str(tmp_path / "missing.pt"))


def test_model_specs_resolve_without_loading_or_network():
    assert models.resolve("ViT-B/32", "openai") == models.ModelSpec("ViT-B-32", "openai", "tag")
    assert models.resolve("curate-tiny-vit", "hf-hub:apple/DFN2B-CLIP-ViT-B-16").kind == "hf-hub"
    assert models.resolve("local-dir:/some/dir", None) == models.ModelSpec("local-dir:/some/dir", None, "local-dir")
    with pytest.raises(RecipeError, match="carries its own weights"):
        models.resolve("hf-hub:apple/DFN2B-CLIP-ViT-B-16", "openai")


def saved_weights(directory: Path, seed: int, edit=None) -> dict[str, Path]:
    """A random curate-tiny-vit's weights as .pt, .safetensors and an open_clip local-dir."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    models.register_configs()
    torch.manual_seed(seed)
    state = open_clip.create_model("curate-tiny-vit").state_dict()
    if edit:
        edit(state)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "weights.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "weights.safetensors")
    local = directory / "local"
    local.mkdir(exist_ok=True)
    config = json.loads((models.CONFIG_DIR / "curate-tiny-vit.json").read_text())
    (local / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file({k: v.contiguous() for k, v in state.items()}, local / "open_clip_model.safetensors")
    return {"pt": directory / "weights.pt", "safetensors": directory / "weights.safetensors", "local": local}


def test_checkpoint_round_trip_pt_safetensors_local_dir(image_pool, tmp_path):
    weights = saved_weights(tmp_path / "w", seed=7)
    tables = {}
    for kind, path in weights.items():
        pretrained = f"local-dir:{path}" if kind == "local" else str(path)
        manifest = run_embed(image_pool, tmp_path / kind, pretrained=pretrained)
        assert manifest["weights"] == ("local-dir" if kind == "local" else "file")
        tables[kind] = embed_table(tmp_path / kind)
    assert tables["pt"].equals(tables["safetensors"]) and tables["pt"].equals(tables["local"])
    run_embed(image_pool, tmp_path / "random")
    assert not embed_table(tmp_path / "random").equals(tables["pt"])
    manifest = read_manifest(tmp_path / "pt" / "embed")
    assert manifest["checkpoint_sha256"] and manifest["pretrained"] == str(weights["pt"])


def test_new_weights_at_the_same_path_recompute(image_pool, tmp_path):
    path = saved_weights(tmp_path / "a", seed=1)["pt"]
    first = run_embed(image_pool, tmp_path / "out", pretrained=str(path))
    os.replace(saved_weights(tmp_path / "b", seed=2)["pt"], path)
    second = run_embed(image_pool, tmp_path / "out", pretrained=str(path))
    assert first["fingerprint"] != second["fingerprint"]
    assert first["checkpoint_sha256"] != second["checkpoint_sha256"]


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(image_pool, tmp_path):
    for name in ("garbage.pt", "garbage.safetensors"):
        (tmp_path / name).write_bytes(b"definitely not a checkpoint " * 20)
        with pytest.raises(RecipeError, match=f"{name}: not a loadable curate-tiny-vit checkpoint"):
            run_embed(image_pool, tmp_path / "out", pretrained=str(tmp_path / name))
    import pickle
    (tmp_path / "code.pt").write_bytes(pickle.dumps({"run": os.system}, protocol=2))  # must never be unpickled
    with pytest.raises(RecipeError, match="weights_only=True"):
        run_embed(image_pool, tmp_path / "out", pretrained=str(tmp_path / "code.pt"))
    weights = saved_weights(tmp_path / "w", seed=0)["pt"]
    with pytest.raises(RecipeError, match="not a loadable ViT-S-32 checkpoint"):
        run_embed(image_pool, tmp_path / "out", model="ViT-S-32", pretrained=str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"model": "curate-tiny-vit"}))
    with pytest.raises(RecipeError, match="holds a 'curate-tiny-vit' model"):
        run_embed(image_pool, tmp_path / "out", model="ViT-S-32", pretrained=str(weights))


def test_non_finite_and_zero_outputs_get_a_reason_and_no_embedding(image_pool, tmp_path):
    def nan_text_zero_image(state):
        state["text_projection"].fill_(float("nan"))
        state["visual.proj"].zero_()

    weights = saved_weights(tmp_path / "w", seed=0, edit=nan_text_zero_image)["pt"]
    run_embed(image_pool, tmp_path / "out", pretrained=str(weights))
    table = embed_table(tmp_path / "out")
    reasons = set(table.column("embed_reason").to_pylist())
    assert reasons <= {"zero_norm", "non_finite", "no_image", "decode_error", "tiny_image", "too_many_pixels", "no_text"}
    assert "zero_norm" in reasons and table.column("embed_image").null_count == table.num_rows
    assert table.column("embed_text").null_count == table.num_rows


def test_random_weights_must_be_said_and_consumers_refuse_them_and_other_models(image_pool, tmp_path):
    with pytest.raises(RecipeError, match="no weights for curate-tiny-vit: set pretrained.*pretrained: random"):
        run_embed(image_pool, tmp_path / "unset", pretrained=None)
    out = tmp_path / "out"
    assert run_embed(image_pool, out)["weights"] == "random"  # pretrained: random, said explicitly
    stages = {"embed": {"batch_size": 8, "pretrained": "random"},
              "score": {"embeddings": "embed", "score_column": None, "fraction": 0.5, "model": "ViT-B-32"}}
    recipe = parse_recipe({"stages": stages, "select": "score_keep"}, "t")
    with pytest.raises(RecipeError, match="made with random weights.*random_weights: true"):
        pipeline.run_stage(*recipe.stages[1], image_pool, out, workers=1)
    for name, values in (("cluster", {"clusters": 2}),):
        with pytest.raises(RecipeError, match=f"{name}: the 'embed' embeddings were made with random weights"):
            pipeline.run_stage(*parse_recipe({"stages": {name: {"embeddings": "embed", **values}}, "select": "true"},
                                             "t").stages[0], image_pool, out, workers=1)
    recipe = parse_recipe({"stages": stages, "select": "score_keep", "random_weights": True}, "t")
    with pytest.raises(RecipeError, match="made by 'curate-tiny-vit'"):
        pipeline.run_stage(*recipe.stages[1], image_pool, out, workers=1)


@pytest.mark.spark
def test_spark_embeddings_equal_local_ones(image_pool, tmp_path, spark):
    run_embed(image_pool, tmp_path / "local")
    manifest = run_embed(image_pool, tmp_path / "spark", engine="spark", spark=spark)
    assert manifest["layout"] == "spark" and manifest["model"] == "curate-tiny-vit"
    assert embed_table(tmp_path / "spark").equals(embed_table(tmp_path / "local"))


def test_sigkill_mid_stage_resumes_only_unfinished_partitions(tmp_path):
    rows = good_rows(12 * 24)
    pool = write_image_pool(tmp_path / "pool", [rows[i:i + 24] for i in range(0, len(rows), 24)])
    run_embed(pool, tmp_path / "reference", batch_size=4)
    out = tmp_path / "killed"
    command = [str(BIN / "curate"), "embed", "--pool", str(pool), "--out", str(out), "--set", "batch_size=4",
               "--set", "pretrained=random"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "embed" / "_done").glob("*.json"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "embed" / "_done").glob("*.json")}
    assert 3 <= len(finished) < 12, "the kill should land in the middle of the stage"
    parts = {p.name: p.stat().st_mtime_ns for p in (out / "embed").glob("part-*.parquet")}
    pipeline.run_stage("embed", embed_config(batch_size=4), pool, out, workers=1)
    for name, mtime in finished.items():  # finished partitions were not recomputed
        assert (out / "embed" / "_done" / name).stat().st_mtime_ns == mtime
        part = name.replace(".json", ".parquet")
        assert (out / "embed" / part).stat().st_mtime_ns == parts[part]
    assert len(list((out / "embed" / "_done").glob("*.json"))) == 12
    assert embed_table(out).equals(embed_table(tmp_path / "reference"))
    assert read_manifest(out / "embed")["status"] == "complete" and not list(out.glob("**/.*tmp*"))
