"""Which layers a LoRA covers and the kohya names they are stored under.

kohya's ``networks.lora`` is the format AUTOMATIC1111, ComfyUI and diffusers'
``load_lora_weights`` all read. Its layers, per module, are ``<name>.lora_down.weight``,
``<name>.lora_up.weight`` and ``<name>.alpha``, where the name is:

- UNet, SD 1.x / 2.x: ``lora_unet_`` + the diffusers module path with ``_`` for ``.``
  (kohya trains those on the diffusers UNet);
- UNet, SDXL: ``lora_unet_`` + the original (sgm) path, e.g. ``input_blocks_4_1_...``
  (kohya trains SDXL on the sgm UNet; diffusers maps these back by the UNet's config);
- text encoders: ``lora_te_`` (SDXL: ``lora_te1_`` / ``lora_te2_``) + the
  ``text_model.`` path of the HF CLIP model, underscored.

The targets are kohya's: every Linear (and 1x1 conv) inside the UNet's transformer blocks
(attention, feed-forward, proj_in/proj_out) and the text encoders' attention and MLP;
with a conv rank also the resnets', down- and upsamplers' layers (3x3 convs included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "text_encoder_targets", "unet_targets"]

#: Module classes (by name) whose layers a kohya LoRA covers.
UNET_ATTENTION_MODULES = ("Transformer2DModel",)
UNET_CONV_MODULES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_MODULES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


@dataclass(frozen=True)
class Target:
    """One layer of the LoRA: where it sits in its component and its kohya name."""

    #: ``unet``, ``text_encoder`` or ``text_encoder_2``.
    component: str
    #: The module path inside the component (``named_modules`` spelling).
    path: str
    #: kohya's name (without ``.lora_down.weight``).
    name: str
    #: Whether it is a conv with a kernel larger than 1x1 (ranked by the conv rank).
    spatial: bool


def _layer_kind(module: Any) -> str | None:
    """``linear``, ``conv1x1``, ``conv`` or None (not a layer a LoRA replaces)."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d):
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
    return None


def _sgm_names(unet: Any) -> dict[str, str]:
    """diffusers UNet module path -> original (sgm) path, from the converter's key map."""
    from vitdex.training.convert.keymaps import unet_to_ldm

    state = dict(unet.state_dict())
    # The key map keeps each tensor object, so identity ties the two names together.
    by_id = {id(t): k for k, t in state.items()}
    mapped = unet_to_ldm(state, dict(unet.config))
    names: dict[str, str] = {}
    for ldm_key, tensor in mapped.items():
        key = by_id[id(tensor)]
        if key.endswith(".weight"):
            names[key.removesuffix(".weight")] = ldm_key.removesuffix(".weight")
    return names


def unet_targets(unet: Any, *, version: str, conv: bool) -> list[Target]:
    """The UNet layers a LoRA of ``version`` covers (resnets and samplers only with ``conv``)."""
    modules = UNET_ATTENTION_MODULES + (UNET_CONV_MODULES if conv else ())
    sgm = _sgm_names(unet) if version == "sdxl" else None
    targets: dict[str, Target] = {}
    for parent_path, parent in unet.named_modules():
        if type(parent).__name__ not in modules:
            continue
        for child_path, child in parent.named_modules():
            kind = _layer_kind(child)
            if kind is None or not child_path:
                continue
            path = f"{parent_path}.{child_path}"
            original = sgm[path] if sgm is not None else path
            targets[path] = Target(
                component="unet",
                path=path,
                name="lora_unet_" + original.replace(".", "_"),
                spatial=kind == "conv",
            )
    return list(targets.values())


def text_encoder_targets(encoder: Any, *, component: str, prefix: str) -> list[Target]:
    """The attention and MLP layers of a CLIP text encoder, named ``<prefix>text_model_...``.

    Recent transformers flatten ``CLIPTextModel`` (no ``text_model`` wrapper); the names
    keep the wrapper's ``text_model.`` so that every reader finds them.
    """
    wrapped = hasattr(encoder, "text_model")
    targets: list[Target] = []
    for parent_path, parent in encoder.named_modules():
        if type(parent).__name__ not in TEXT_MODULES:
            continue
        for child_path, child in parent.named_children():
            if _layer_kind(child) != "linear":
                continue
            path = f"{parent_path}.{child_path}"
            named = path if wrapped else f"text_model.{path}"
            targets.append(
                Target(
                    component=component,
                    path=path,
                    name=prefix + named.replace(".", "_"),
                    spatial=False,
                )
            )
    return targets
