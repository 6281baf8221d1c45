"""Random ViT checkpoints, built and saved by the tests, benchmarks and demo themselves.

The files are those a hub checkpoint has (``config.json``, ``model.safetensors``,
``preprocessor_config.json``), so the real loading code runs on them without hub access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitdex.indexer.models import quiet_progress

__all__ = [
    "PRESETS",
    "TINY_IMAGE_SIZE",
    "TINY_LABELS",
    "TINY_LAYERS",
    "VIT_BASE_PREPROCESSOR",
    "build_random_vit",
    "build_tiny_vit",
]

#: Architectures :func:`build_random_vit` can build. "base" is ViT-B/16 at 224 pixels, the
#: shape of google/vit-base-patch16-224; "tiny" is small enough to build in milliseconds.
PRESETS: dict[str, dict[str, int]] = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
    },
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    },
}

#: google/vit-base-patch16-224's preprocessor_config.json.
VIT_BASE_PREPROCESSOR: dict[str, Any] = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}

#: Shape of the tiny checkpoints: 4 layers, 32x32 input, 10 labels named "label 0".."label 9".
TINY_LAYERS = PRESETS["tiny"]["num_hidden_layers"]
TINY_IMAGE_SIZE = PRESETS["tiny"]["image_size"]
TINY_LABELS = 10


def build_random_vit(
    folder: Path,
    *,
    preset: str = "base",
    seed: int = 0,
    num_labels: int | None = 1000,
    image_size: int | None = None,
) -> Path:
    """Save a randomly initialised ViT checkpoint to ``folder`` and return the folder.

    The folder gets ``config.json``, ``model.safetensors`` and a ``preprocessor_config.json``
    equal to google/vit-base-patch16-224's (at the model's image size). With ``num_labels``
    the model is a ``ViTForImageClassification`` whose labels are named ``"label N"``
    (tiny) or ``"random-label-N"`` (base); with ``None`` it is a headless ``ViTModel``.
    The same ``seed`` always gives the same weights.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape: dict[str, Any] = dict(PRESETS[preset])
    if image_size is not None:
        shape["image_size"] = image_size
    extra: dict[str, Any] = {}
    if num_labels is not None:
        prefix = "label " if preset == "tiny" else "random-label-"
        id2label = {i: f"{prefix}{i}" for i in range(num_labels)}
        extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = ViTConfig(**shape, **extra)

    # A private RNG stream: building a model must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any
        if num_labels is None:
            model = ViTModel(config, add_pooling_layer=False)
        else:
            model = ViTForImageClassification(config)
    model.eval()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(folder)
    # save_pretrained leaves the weights owner-only (0600); a checkpoint shared by the
    # api and worker containers must be readable by other users too.
    for weights in folder.glob("*.safetensors"):
        weights.chmod(0o644)
    size = shape["image_size"]
    preprocessor = {**VIT_BASE_PREPROCESSOR, "size": {"height": size, "width": size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


def build_tiny_vit(folder: Path, *, classifier: bool = True, seed: int = 0) -> Path:
    """Save a tiny random ViT (hidden 32, 4 layers) with ViT-B/16's preprocessing to ``folder``.

    With ``classifier`` it is a ``ViTForImageClassification`` with 10 named labels,
    otherwise a headless ``ViTModel``. Builds in well under a second.
    """
    return build_random_vit(
        folder, preset="tiny", seed=seed, num_labels=TINY_LABELS if classifier else None
    )
