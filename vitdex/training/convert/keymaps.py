"""Diffusers state dicts -> the original single-file (LDM / sgm) key layout, per component.

The original layout is what AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file``
read: one state dict with ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE)
and the text encoder(s) under ``cond_stage_model.*`` or ``conditioner.embedders.N.*``. The
UNet mapping is derived from its config (levels, layers per block, which blocks have
attention), so it serves the 4-level SD 1.x/2.x UNets, SDXL's 3 levels and any test-sized
variant alike. Every key must find a place; anything unknown raises
:class:`ConversionError` instead of being dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vitdex.errors import VitdexError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SD1_TEXT_PREFIX",
    "SD2_TEXT_PREFIX",
    "SDXL_TEXT2_PREFIX",
    "SDXL_TEXT_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "ConversionError",
    "clip_to_ldm",
    "openclip_to_ldm",
    "prefixed",
    "unet_to_ldm",
    "vae_to_ldm",
]

#: Prefixes of each component in the original layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."


class ConversionError(VitdexError):
    """A diffusers folder cannot be written in the original single-file layout."""

    http_status = 422
    exit_code = 2


# --------------------------------------------------------------------------- UNet

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    # SDXL's size/crop conditioning and class-conditioned UNets share label_emb.
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
}

_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}


def _rename_inner(suffix: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if suffix.startswith(old):
            return new + suffix[len(old) :]
    return suffix


def _unet_prefixes(
    state: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, tuple[str, str]]:
    """diffusers prefix -> (original prefix, kind) for every block of the UNet."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ConversionError(
            "UNets with a different number of layers per block at each level have no "
            "original single-file layout"
        )
    levels = len(config["down_block_types"])
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ConversionError(f"unsupported UNet mid block {config['mid_block_type']!r}")
    table: dict[str, tuple[str, str]] = {}
    # input_blocks.0 is conv_in; then per level: lpb (resnet, attention) pairs and, except
    # at the lowest resolution, a downsampler.
    index = 1
    for level in range(levels):
        for layer in range(lpb):
            table[f"down_blocks.{level}.resnets.{layer}."] = (f"input_blocks.{index}.0.", "resnet")
            table[f"down_blocks.{level}.attentions.{layer}."] = (f"input_blocks.{index}.1.", "")
            index += 1
        if level < levels - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.", "")
            index += 1
    table["mid_block.resnets.0."] = ("middle_block.0.", "resnet")
    table["mid_block.attentions.0."] = ("middle_block.1.", "")
    table["mid_block.resnets.1."] = ("middle_block.2.", "resnet")
    # Output blocks: lpb + 1 per level; the upsampler follows the attention when there is one.
    index = 0
    for level in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
        for layer in range(lpb + 1):
            table[f"up_blocks.{level}.resnets.{layer}."] = (f"output_blocks.{index}.0.", "resnet")
            table[f"up_blocks.{level}.attentions.{layer}."] = (f"output_blocks.{index}.1.", "")
            if layer == lpb:
                slot = 2 if has_attention else 1
                table[f"up_blocks.{level}.upsamplers.0.conv."] = (
                    f"output_blocks.{index}.{slot}.conv.",
                    "",
                )
            index += 1
    return table


_BLOCK_KEY = re.compile(r"^((?:down_blocks|up_blocks)\.\d+\.(?:resnets|attentions)\.\d+\.)")
_MID_KEY = re.compile(r"^(mid_block\.(?:resnets|attentions)\.\d+\.)")
_SAMPLER_KEY = re.compile(
    r"^((?:down_blocks|up_blocks)\.\d+\.(?:downsamplers|upsamplers)\.0\.conv\.)"
)


def unet_to_ldm(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the original layout (no prefix).

    Transformer blocks keep their names (the original SpatialTransformer uses the same
    ones); resnets are renamed (``norm1`` -> ``in_layers.0``...) and every block gets its
    ``input_blocks.N`` / ``middle_block.N`` / ``output_blocks.N`` index from the config.
    """
    table = _unet_prefixes(state, config)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new: str | None = None
        for old, target in _UNET_TOP.items():
            if key.startswith(old):
                new = target + key[len(old) :]
                break
        if new is None:
            match = _BLOCK_KEY.match(key) or _MID_KEY.match(key) or _SAMPLER_KEY.match(key)
            if match and match.group(1) in table:
                prefix, kind = table[match.group(1)]
                suffix = key[len(match.group(1)) :]
                if kind == "resnet":
                    suffix = _rename_inner(suffix, _UNET_RESNET)
                new = prefix + suffix
        if new is None:
            raise ConversionError(f"UNet weight {key!r} has no place in the original layout")
        if new in out:
            raise ConversionError(f"UNet weights collide at {new!r}")
        out[new] = tensor
    return out


# --------------------------------------------------------------------------- VAE

_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
    # Folders saved by old diffusers versions.
    "query.": "q.",
    "key.": "k.",
    "value.": "v.",
    "proj_attn.": "proj_out.",
}

_VAE_KEY = re.compile(
    r"^(encoder|decoder)\.(?:"
    r"(?P<blocks>down_blocks|up_blocks)\.(?P<block>\d+)\.(?P<part>resnets\.\d+|downsamplers\.0|upsamplers\.0)\."
    r"|mid_block\.(?P<mid>resnets\.\d+|attentions\.0)\."
    r"|(?P<top>conv_in|conv_out|conv_norm_out)\.)"
)


def vae_to_ldm(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original layout (no prefix).

    The decoder's up blocks are numbered the other way round, and the mid-block
    attention's linear projections become the 1x1 convolutions the original stores.
    """
    levels = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new: str | None = None
        value = tensor
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            new = key
        else:
            match = _VAE_KEY.match(key)
            if match is not None:
                side = match.group(1)
                suffix = key[match.end() :]
                if match.group("top"):
                    top = {"conv_norm_out": "norm_out"}.get(match.group("top"), match.group("top"))
                    new = f"{side}.{top}.{suffix}"
                elif match.group("blocks"):
                    block = int(match.group("block"))
                    part = match.group("part")
                    if match.group("blocks") == "down_blocks":
                        base = f"{side}.down.{block}"
                    else:
                        base = f"{side}.up.{levels - 1 - block}"
                    if part.startswith("resnets."):
                        new = f"{base}.block.{part.split('.')[1]}.{_vae_resnet(suffix)}"
                    elif part == "downsamplers.0":
                        new = f"{base}.downsample.{suffix}"
                    else:
                        new = f"{base}.upsample.{suffix}"
                else:
                    mid = match.group("mid")
                    if mid.startswith("resnets."):
                        number = int(mid.split(".")[1]) + 1
                        new = f"{side}.mid.block_{number}.{_vae_resnet(suffix)}"
                    else:
                        renamed = _rename_inner(suffix, _VAE_ATTENTION)
                        new = f"{side}.mid.attn_1.{renamed}"
                        if renamed.endswith("weight") and tensor.ndim == 2:
                            value = tensor.reshape(*tensor.shape, 1, 1)
        if new is None:
            raise ConversionError(f"VAE weight {key!r} has no place in the original layout")
        out[new] = value
    return out


def _vae_resnet(suffix: str) -> str:
    return (
        "nin_shortcut." + suffix[len("conv_shortcut.") :]
        if suffix.startswith("conv_shortcut.")
        else suffix
    )


# --------------------------------------------------------------------------- text encoders


def _hf_clip_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text encoder keys as ``text_model.*`` (transformers >= 5.6 saves them without it)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue  # a derived buffer, not a weight
        if key.startswith("text_model.") or key.startswith("text_projection."):
            out[key] = tensor
        else:
            out["text_model." + key] = tensor
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (SD 1.x, SDXL's first encoder): the transformers layout, ``text_model.*``."""
    out = _hf_clip_keys(state)
    if any(k.startswith("text_projection.") for k in out):
        raise ConversionError("the OpenAI CLIP text encoder of SD 1.x/SDXL has no projection")
    return out


_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
_LAYER_KEY = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.*)$")
_QKV_KEY = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def openclip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP (SD 2.x, SDXL's second encoder): ``transformer.resblocks.N`` with the
    query, key and value projections fused into ``attn.in_proj_*``, and
    ``text_projection`` stored as the matrix that multiplies (the Linear weight transposed).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _hf_clip_keys(state).items():
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = tensor
            continue
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
            continue
        match = _LAYER_KEY.match(key)
        if match is None:
            raise ConversionError(f"text encoder weight {key!r} has no place in OpenCLIP")
        layer, rest = int(match.group(1)), match.group(2)
        part = _QKV_KEY.match(rest)
        if part is not None:
            qkv.setdefault((layer, part.group(2)), {})[part.group(1)] = tensor
            continue
        renamed = _rename_inner(rest, _OPENCLIP_LAYER)
        if renamed == rest:
            raise ConversionError(f"text encoder weight {key!r} has no place in OpenCLIP")
        out[f"transformer.resblocks.{layer}.{renamed}"] = tensor
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"text encoder layer {layer} lacks one of q, k, v ({kind})")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    return out


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every key under ``prefix`` (where a component sits in the whole model)."""
    return {prefix + key: tensor for key, tensor in state.items()}
