"""The torch side of every runtime: loading a ViT checkpoint's modules, and the pooling
that turns its hidden states into one unit vector per space.

The embedder's torch path and the exported graphs share :func:`pooled_outputs`, so an
export computes exactly what torch computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vitdex.errors import ModelLoadError
from vitdex.indexer.models import quiet_progress
from vitdex.indexer.spaces import ResolvedSpace

__all__ = ["EmbedModule", "load_vit_modules", "pooled_outputs", "wants_classifier"]

log = logging.getLogger(__name__)


def wants_classifier(config: Any) -> bool:
    """Whether the checkpoint's config describes a classifier (not a bare backbone)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(str(a).endswith("ForImageClassification") for a in architectures)
    labels = getattr(config, "id2label", None) or {}
    return not (len(labels) == 2 and set(labels.values()) == {"LABEL_0", "LABEL_1"})


def load_vit_modules(
    folder: Path,
    config: Any,
    dtype: torch.dtype,
    error: Callable[[str], ModelLoadError],
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The backbone and (when trained weights exist) classifier head of ``folder``.

    A head whose weights are missing is dropped: a random head gives confident nonsense.
    Missing backbone tensors are a :class:`ModelLoadError` made by ``error``.
    """
    import transformers

    # from_pretrained(output_loading_info=True) returns a tuple its stubs do not know.
    classifier_cls: Any = transformers.ViTForImageClassification
    backbone_cls: Any = transformers.ViTModel
    options: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": "sdpa",
        "output_loading_info": True,
    }
    try:
        with quiet_progress():
            if wants_classifier(config):
                model, info = classifier_cls.from_pretrained(folder, **options)
                missing = list(info.get("missing_keys", []))
                if any(str(k).startswith("classifier.") for k in missing):
                    log.warning("%s has no trained classifier weights; not classifying", folder)
                    backbone, head = model.vit, None
                else:
                    backbone, head = model.vit, model.classifier
                missing = [k for k in missing if not str(k).startswith("classifier.")]
            else:
                backbone, info = backbone_cls.from_pretrained(
                    folder, add_pooling_layer=False, **options
                )
                head = None
                missing = list(info.get("missing_keys", []))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise error(f"the files in {folder} cannot be read ({type(exc).__name__}: {exc})") from exc
    if missing:
        shown = ", ".join(sorted(map(str, missing))[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise error(
            f"its weights lack {len(missing)} tensors of the ViT ({shown}{more}); "
            "the checkpoint is incomplete or not a ViT"
        )
    return backbone, head


def pooled_outputs(
    backbone: torch.nn.Module,
    head: torch.nn.Module | None,
    layers: Sequence[ResolvedSpace],
    pixels: torch.Tensor,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """One forward pass: an L2-normalised float32 vector per space, and the logits."""
    out = backbone(pixel_values=pixels, output_hidden_states=True)
    last = out.last_hidden_state
    pooled = []
    for space in layers:
        states = last if space.layer is None else out.hidden_states[space.layer]
        if space.pooling == "cls":
            vector = states[:, 0].float()
        else:  # mean over the patch tokens; the [CLS] token is not a patch
            vector = states[:, 1:].float().mean(dim=1)
        pooled.append(torch.nn.functional.normalize(vector, dim=1))
    logits = head(last[:, 0]).float() if head is not None else None
    return tuple(pooled), logits


class EmbedModule(torch.nn.Module):
    """What gets exported: pixel_values [n, 3, H, W] → (vector per space..., logits)."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        head: torch.nn.Module | None,
        layers: Sequence[ResolvedSpace],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.layers = list(layers)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat outputs (ONNX has no nesting): the spaces in order, then the logits."""
        vectors, logits = pooled_outputs(self.backbone, self.head, self.layers, pixel_values)
        return (*vectors, logits) if logits is not None else vectors
