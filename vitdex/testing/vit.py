"""Tiny ViT checkpoints, built and saved by the tests themselves (no hub access needed)."""

from __future__ import annotations

from pathlib import Path

from vitdex.indexer.models import build_random_vit

__all__ = ["TINY_IMAGE_SIZE", "TINY_LABELS", "TINY_LAYERS", "build_tiny_vit"]

#: Shape of the tiny checkpoints: 4 layers, 32x32 input, 10 labels named "label 0".."label 9".
TINY_LAYERS = 4
TINY_IMAGE_SIZE = 32
TINY_LABELS = 10


def build_tiny_vit(folder: Path, *, classifier: bool = True, seed: int = 0) -> Path:
    """Save a tiny random ViT (hidden 32, 4 layers) with ViT-B/16's preprocessing to ``folder``.

    With ``classifier`` it is a ``ViTForImageClassification`` with 10 named labels,
    otherwise a headless ``ViTModel``. Builds in well under a second.
    """
    return build_random_vit(
        folder, preset="tiny", seed=seed, num_labels=TINY_LABELS if classifier else None
    )
