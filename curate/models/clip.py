"""open_clip models for `embed` and `train-dfn`: resolve, validate, load once per process.

A model is an open_clip architecture plus its weights (DESIGN.md 4.5, 7):

- ``model``: an open_clip name (``ViT-B-32``, ``ViT-B-32-quickgelu`` for DFN/OpenAI weights,
  ``curate-tiny-vit`` from curate/model_configs), or an ``hf-hub:org/repo`` / ``local-dir:PATH``
  id that carries its own config and weights;
- ``pretrained``: ``"random"`` (random init from torch seed 0, the same in every process: speed
  and pipeline tests; said explicitly, because such embeddings mean nothing), a pretrained tag
  (``openai``, ``dfn2b``, ...; downloaded by open_clip, so only where there is a network), a
  local checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``, e.g. ``train-dfn``'s
  ``dfn.pt``), or an ``hf-hub:``/``local-dir:`` id (then it replaces ``model``).

Mistakes stop with a `ModelError` before any work: an unknown name lists the close ones, a
missing checkpoint or a file that is not a checkpoint of this architecture names the file.
Checkpoints load with ``weights_only=True`` (no pickled code runs). ``load_model`` is cached
per (model, pretrained, device), so a local worker or a reused Spark Python worker loads once.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from curate.errors import ModelError
from curate.fingerprint import file_sha256

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
SCHEMAS = ("hf-hub:", "local-dir:")
RANDOM = "random"  # pretrained: random weights, said explicitly
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def openmp_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment for torch: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the
    user chose otherwise. libgomp's default spins, and spinning threads take the cores that image
    decoding, Spark or other jobs on a shared machine need: on a busy 2-core machine a
    two-thread forward pass ran 3-6 times slower spinning. Read once, when torch is imported."""
    return {**environ, "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def import_torch() -> Any:
    """torch, imported with openmp_env's setting when this process imports it first."""
    if "torch" not in sys.modules:
        os.environ.update(openmp_env(dict(os.environ)))
    import torch

    return torch


def register_configs() -> None:
    """Make the architectures in curate/model_configs/*.json known to open_clip (idempotent)."""
    import open_clip

    ours = {path.stem for path in CONFIG_DIR.glob("*.json")}
    if not ours <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class ModelSpec:
    model_id: str             # what open_clip.create_model gets as model_name
    weights: str | None       # its `pretrained`: a tag or a checkpoint file; None otherwise
    kind: str                 # random | tag | file | hf-hub | local-dir


def resolve(model: str, pretrained: str | None) -> ModelSpec:
    """Check a (model, pretrained) pair without loading anything, or raise ModelError."""
    import open_clip

    register_configs()
    if pretrained and pretrained.startswith(SCHEMAS):
        model, pretrained = pretrained, None
    if model.startswith(SCHEMAS):
        if pretrained:
            raise ModelError(f"model {model!r} carries its own weights; drop pretrained={pretrained!r}")
        return ModelSpec(model, None, model.split(":", 1)[0])
    name = model.replace("/", "-")  # open_clip's spelling: ViT-B/32 -> ViT-B-32
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=8, cutoff=0.6)
        raise ModelError(f"unknown open_clip model {model!r}; close names: {close or 'none'} "
                         f"(open_clip.list_models() lists all {len(open_clip.list_models())})")
    if pretrained is None:
        raise ModelError(f"no weights for {name}: set pretrained to a tag ({open_clip.list_pretrained_tags_by_model(name)[:4] or 'none'}), "
                         f"a checkpoint file or an hf-hub:/local-dir: id; or pretrained: random for random weights "
                         f"(embeddings that mean nothing: for speed and pipeline tests only)")
    if pretrained == RANDOM:
        return ModelSpec(name, None, "random")
    if open_clip.is_pretrained_cfg(name, pretrained):
        return ModelSpec(name, pretrained, "tag")
    path = Path(pretrained).expanduser()
    if path.is_file():
        check_trained_as(path, name)
        return ModelSpec(name, str(path), "file")
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in pretrained or path.exists():
        raise ModelError(f"checkpoint {pretrained!r} does not exist or is not a file")
    raise ModelError(f"pretrained {pretrained!r} is neither a checkpoint file nor a tag of {name}; its tags: "
                     f"{open_clip.list_pretrained_tags_by_model(name) or 'none'}")


def check_trained_as(path: Path, name: str) -> None:
    """A checkpoint written by train-dfn has a JSON beside it naming its architecture."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return
    try:
        trained_as = json.loads(sidecar.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return
    if trained_as and trained_as != name:
        raise ModelError(f"{path} holds a {trained_as!r} model (see {sidecar.name}), not {name!r}; set model: {trained_as}")


@dataclass(frozen=True)
class LoadedModel:
    model: Any                                 # open_clip CLIP, eval mode, on `device`
    preprocess: Callable[[Any], Any]           # PIL image -> (3, H, W) float tensor
    tokenizer: Callable[[list[str]], Any]      # texts -> (n, context_length) int tensor
    device: str
    dim: int
    description: dict[str, Any]


def load_model(model: str, pretrained: str | None, device: str = "cpu") -> LoadedModel:
    """Create the model with its inference transform and tokenizer, once per process (a
    checkpoint rewritten in place, e.g. by a new train-dfn run, is loaded again)."""
    path = Path(pretrained).expanduser() if pretrained else None
    stamp = (path.stat().st_size, path.stat().st_mtime_ns) if path is not None and path.is_file() else None
    return _load_model(model, pretrained, device, stamp)


@contextlib.contextmanager
def quiet_root_logger():
    """open_clip logs every loading step at INFO on the root logger; keep its warnings only."""
    level = logging.root.level
    logging.root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logging.root.setLevel(level)


@functools.lru_cache(maxsize=4)
def _load_model(model: str, pretrained: str | None, device: str, stamp: tuple[int, int] | None) -> LoadedModel:
    torch = import_torch()
    import open_clip

    spec = resolve(model, pretrained)
    try:
        with quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights are the same in every process (local, Spark workers)
            net, _, preprocess = open_clip.create_model_and_transforms(spec.model_id, pretrained=spec.weights,
                                                                        device=device, weights_only=True)
            tokenizer = open_clip.get_tokenizer(spec.model_id)
    except Exception as error:  # torch, safetensors and open_clip raise many kinds; name the file
        if spec.kind != "file":
            raise ModelError(f"cannot load open_clip model {spec.model_id!r} (pretrained {pretrained!r}): {error}") from error
        raise ModelError(f"{spec.weights}: not a loadable {spec.model_id} checkpoint ({short_error(error)})") from error
    net.eval()
    with torch.inference_mode():
        dim = int(net.encode_text(tokenizer([""]).to(device)).shape[-1])
    description = describe_spec(spec, pretrained, net, tokenizer, dim)
    log.info("loaded %s (%s weights) on %s: %d-d embeddings", spec.model_id, spec.kind, device, dim)
    return LoadedModel(net, preprocess, tokenizer, device, dim, description)


def short_error(error: Exception) -> str:
    """The informative part of a loading error (torch's weights_only refusal is a long essay)."""
    text = str(error)
    if "WeightsUnpickler error:" in text or "Weights only load failed" in text:
        # torch words this differently across versions; its last paragraph names the refused global
        paragraphs = [p.strip() for p in text.split("WeightsUnpickler error:", 1)[-1].split("\n\n") if p.strip()]
        detail = next((p for p in paragraphs if "unsupported" in p.lower() or "blocked" in p.lower()), paragraphs[-1])
        return f"torch.load(weights_only=True) refused it: {detail[:300]}; it is not a file of tensors"
    return f"{type(error).__name__}: {text[:400]}"


def describe_spec(spec: ModelSpec, pretrained: str | None, net: Any, tokenizer: Any, dim: int) -> dict[str, Any]:
    """What a consumer of the embeddings must know: model, weights, dimension, preprocessing."""
    cfg = net.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    return {
        "model": spec.model_id,
        "pretrained": pretrained,
        "weights": spec.kind,
        "checkpoint_sha256": file_sha256(spec.weights) if spec.kind == "file" else None,
        "dim": dim,
        "preprocess": {"image_size": list(size), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                       "interpolation": cfg["interpolation"], "resize_mode": cfg["resize_mode"],
                       "fill_color": cfg.get("fill_color", 0)},
        "context_length": int(getattr(tokenizer, "context_length", 0)),
        "tokenizer": type(tokenizer).__name__,
        "libraries": {name: metadata.version(name) for name in ("open_clip_torch", "torch")},
    }


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_image_size(model: str) -> int:
    """The (shorter) input side of a registered architecture, without building it."""
    import open_clip

    register_configs()
    config = open_clip.get_model_config(model.replace("/", "-")) or {}
    size = config.get("vision_cfg", {}).get("image_size", 224)
    return int(min(size) if isinstance(size, (tuple, list)) else size)
