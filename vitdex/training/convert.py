"""Diffusers folder -> the original single-file Stable Diffusion layout, and its validation.

The original (LDM / sgm) layout is what AUTOMATIC1111, ComfyUI and diffusers'
``from_single_file`` read: one state dict with ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE) and the text encoder(s) under ``cond_stage_model.*`` or
``conditioner.embedders.N.*``. The mapping is derived from the component configs (levels,
layers per block, which blocks have attention), so it serves the 4-level SD 1.x/2.x UNets,
SDXL's 3 levels and any test-sized variant alike. Every key of the source must find a
place; anything unknown stops the conversion instead of being dropped.

:func:`validate_checkpoint` loads the written file back with the diffusers pipeline's
``from_single_file`` (offline, configs from the source folder), compares every tensor with
the source and renders the same fixed-seed sample with both pipelines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vitdex.errors import ConfigError, VitdexError
from vitdex.training.bases import SD_VERSIONS
from vitdex.training.quiet import quiet_hub

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMATS",
    "SD_VERSIONS",
    "CheckpointValidationError",
    "ConversionError",
    "ConversionResult",
    "ValidationReport",
    "atomic_path",
    "check_version",
    "clip_to_ldm",
    "convert",
    "detect_version",
    "diffusers_to_ldm",
    "inference_yaml",
    "load_single_file",
    "load_source",
    "native_resolution",
    "openclip_to_ldm",
    "render",
    "resolve_device",
    "sha256_file",
    "unet_to_ldm",
    "vae_to_ldm",
    "validate_checkpoint",
    "validation_size",
]

Format = Literal["safetensors", "ckpt"]
#: File formats a checkpoint can be written in (the first is the default).
FORMATS: tuple[Format, ...] = ("safetensors", "ckpt")

#: Prefixes of each component in the original layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."

#: Prompt, seed and steps of the sample both pipelines render during validation.
VALIDATION_PROMPT = "a photo of sks dog"
VALIDATION_SEED = 0
VALIDATION_STEPS = 2
#: Largest difference (images in [0, 1]) between the two renders that still counts as equal.
SAMPLE_ATOL = 1e-4


class ConversionError(VitdexError):
    """A diffusers folder cannot be written in the original single-file layout."""

    http_status = 422
    exit_code = 2


class CheckpointValidationError(VitdexError):
    """A written single-file checkpoint does not load back equal to its source."""

    http_status = 422
    exit_code = 1


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` wrote."""

    path: Path
    version: str
    format: Format
    half: bool
    sha256: str
    size_bytes: int
    #: The v2 inference YAML beside SD 2.x files (``None`` for SD 1.x and SDXL).
    yaml_path: Path | None
    tensors: int


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_checkpoint`."""

    #: Tensors compared per component (``unet``, ``vae``, ``text_encoder``...).
    tensors: dict[str, int]
    #: Largest absolute pixel difference between the two fixed-seed renders.
    sample_max_diff: float
    #: The pipeline loaded from the single file (for rendering more samples).
    pipeline: Any = field(repr=False)


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing; is this a diffusers folder?") from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    return data


def _load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """A component's weights from its folder: safetensors (single or sharded) or .bin."""
    import torch
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return dict(load_file(folder / name))
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            loaded = torch.load(folder / name, map_location="cpu", weights_only=True)
            return dict(loaded)
    raise ConversionError(f"no weights in {folder} (expected *.safetensors or *.bin)")


def detect_version(folder: Path) -> str:
    """The SD version of a diffusers folder: ``sd15``, ``sd21-base``, ``sd21`` or ``sdxl``.

    SDXL has a second text encoder; SD 2.x has an OpenCLIP text encoder (GELU, where
    OpenAI's CLIP uses quick-GELU); ``sd21`` predicts ``v``, ``sd21-base`` the noise.
    """
    from vitdex.training.bases import detect_version as detect

    if not (folder / "model_index.json").is_file():
        raise ConversionError(f"{folder} is not a diffusers folder (no model_index.json)")
    version = detect(folder)
    prediction = _read_json(folder / "scheduler" / "scheduler_config.json").get(
        "prediction_type", "epsilon"
    )
    if version == "sdxl" and prediction != "epsilon":
        raise ConversionError(f"SDXL with {prediction} prediction is not supported")
    if version == "sd15" and prediction != "epsilon":
        raise ConversionError(
            f"an SD 1.x model with {prediction} prediction has no standard single-file layout"
        )
    return version


def native_resolution(folder: Path) -> int:
    """The image size (pixels) a pipeline was built for: UNet sample size x VAE factor."""
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    factor = 1 << (len(vae["block_out_channels"]) - 1)
    return int(unet["sample_size"]) * factor


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


# --------------------------------------------------------------------------- the whole model


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state.items()}


def check_version(folder: Path, version: str | None) -> str:
    """The folder's detected version; a given ``version`` must be that one."""
    detected = detect_version(folder)
    if version is None:
        return detected
    if version not in SD_VERSIONS:
        raise ConfigError(f"unknown version {version!r}; choose one of {', '.join(SD_VERSIONS)}")
    if version != detected:
        raise ConversionError(
            f"{folder} holds an {detected} model (from its text encoders and scheduler), "
            f"not {version}"
        )
    return version


def diffusers_to_ldm(
    folder: Path, version: str | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """The whole pipeline in ``folder`` as one original-layout state dict, and its version.

    ``version`` is detected from the folder when not given; a given one must agree.
    """
    version = check_version(folder, version)
    unet = unet_to_ldm(
        _load_state_dict(folder / "unet"), _read_json(folder / "unet" / "config.json")
    )
    vae = vae_to_ldm(_load_state_dict(folder / "vae"), _read_json(folder / "vae" / "config.json"))
    text = _load_state_dict(folder / "text_encoder")
    state = {**_prefixed(UNET_PREFIX, unet), **_prefixed(VAE_PREFIX, vae)}
    if version == "sd15":
        state.update(_prefixed(SD1_TEXT_PREFIX, clip_to_ldm(text)))
    elif version in ("sd21", "sd21-base"):
        state.update(_prefixed(SD2_TEXT_PREFIX, openclip_to_ldm(text)))
    else:
        state.update(_prefixed(SDXL_TEXT_PREFIX, clip_to_ldm(text)))
        text_2 = _load_state_dict(folder / "text_encoder_2")
        state.update(_prefixed(SDXL_TEXT2_PREFIX, openclip_to_ldm(text_2)))
    return state, version


# --------------------------------------------------------------------------- v2 YAML


def _yaml_list(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def inference_yaml(folder: Path, version: str) -> str:
    """The original ``v2-inference.yaml`` (``sd21-base``) or ``v2-inference-v.yaml``
    (``sd21``, with ``parameterization: "v"``) for the model in ``folder``.

    The architecture numbers come from the folder's configs, so for SD 2.1 itself the
    text equals Stability's file and a differently sized model gets a YAML that builds it.
    """
    if version not in ("sd21", "sd21-base"):
        raise ConfigError(f"the v2 inference YAML is for SD 2.x models, not {version}")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json")
    channels = [int(c) for c in unet["block_out_channels"]]
    base = channels[0]
    if any(c % base for c in channels):
        raise ConversionError(f"UNet channels {channels} are not multiples of {base}")
    attention_resolutions = sorted(
        (2**level for level, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind),
        reverse=True,
    )
    heads = unet.get("num_attention_heads") or unet["attention_head_dim"]
    if isinstance(heads, int):
        head_line = f"num_heads: {heads}"
    else:
        # diffusers' "attention_head_dim" of SD 2.x counts heads per level; the original
        # fixes the channels per head instead (64 for SD 2.1).
        widths = {c // h for c, h in zip(channels, heads, strict=True)}
        if len(widths) != 1:
            raise ConversionError(f"UNet heads {heads} give unequal head widths {widths}")
        head_line = f"num_head_channels: {widths.pop()}"
    depth = unet.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            raise ConversionError("SD 2.x UNets have the same transformer depth at every level")
        depth = depth[0]
    vae_channels = [int(c) for c in vae["block_out_channels"]]
    vae_base = vae_channels[0]
    vae_mult = "\n".join(f"          - {c // vae_base}" for c in vae_channels)
    parameterization = '    parameterization: "v"\n' if version == "sd21" else ""
    return f"""model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
{parameterization}    linear_start: {sched.get("beta_start", 0.00085)}
    linear_end: {sched.get("beta_end", 0.012)}
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: {sched.get("num_train_timesteps", 1000)}
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: {unet["sample_size"]}
    channels: {unet["in_channels"]}
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: {vae.get("scaling_factor", 0.18215)}
    use_ema: False # we set this to false because this is an inference only config

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: {unet["in_channels"]}
        out_channels: {unet["out_channels"]}
        model_channels: {base}
        attention_resolutions: {_yaml_list(attention_resolutions)}
        num_res_blocks: {unet["layers_per_block"]}
        channel_mult: {_yaml_list([c // base for c in channels])}
        {head_line}
        use_spatial_transformer: True
        use_linear_in_transformer: {bool(unet.get("use_linear_projection", False))}
        transformer_depth: {depth}
        context_dim: {unet["cross_attention_dim"]}
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {vae["latent_channels"]}
        monitor: val/rec_loss
        ddconfig:
          #attn_type: "vanilla-xformers"
          double_z: true
          z_channels: {vae["latent_channels"]}
          resolution: 256
          in_channels: {vae["in_channels"]}
          out_ch: {vae["out_channels"]}
          ch: {vae_base}
          ch_mult:
{vae_mult}
          num_res_blocks: {vae["layers_per_block"]}
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""


# --------------------------------------------------------------------------- writing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_ARCHITECTURES = {
    "sd15": ("stable-diffusion-v1", "https://github.com/CompVis/stable-diffusion"),
    "sd21-base": ("stable-diffusion-v2-512", "https://github.com/Stability-AI/stablediffusion"),
    "sd21": ("stable-diffusion-v2-768-v", "https://github.com/Stability-AI/stablediffusion"),
    "sdxl": ("stable-diffusion-xl-v1-base", "https://github.com/Stability-AI/generative-models"),
}


def _metadata(version: str, title: str, resolution: int, half: bool) -> dict[str, str]:
    # Stability's model spec header: lets UIs tell SD 2 "v" from "epsilon" without a YAML.
    architecture, implementation = _ARCHITECTURES[version]
    return {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if version == "sd21" else "epsilon",
        "modelspec.date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "vitdex.dtype": "float16" if half else "source",
    }


def _output_format(out: Path, fmt: str | None) -> Format:
    suffix = out.suffix.lower()
    if fmt is None:
        fmt = "ckpt" if suffix == ".ckpt" else "safetensors"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose safetensors or ckpt")
    expected = ".ckpt" if fmt == "ckpt" else ".safetensors"
    if suffix != expected:
        raise ConfigError(f"a {fmt} checkpoint's file name must end in {expected}: {out}")
    return "ckpt" if fmt == "ckpt" else "safetensors"


def convert(
    source: Path,
    out: Path,
    *,
    version: str | None = None,
    half: bool = False,
    fmt: str | None = None,
    title: str | None = None,
) -> ConversionResult:
    """Write the diffusers pipeline in ``source`` as one original-layout file at ``out``.

    ``fmt`` is ``safetensors`` (default) or ``ckpt`` (``torch.save({"state_dict": ...})``);
    the file name must carry the matching suffix. ``half`` stores floating tensors as fp16.
    SD 2.x files get their inference YAML beside them, with the same stem (how AUTOMATIC1111
    finds it). Both are written to a temporary file first and renamed into place.
    """
    source = source.expanduser().resolve()
    out = out.expanduser().resolve()
    file_format = _output_format(out, fmt)
    if out.exists():
        raise ConfigError(f"{out} exists; choose another output file or delete it first")
    state, version = diffusers_to_ldm(source, version)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if file_format == "safetensors":
            from safetensors.torch import save_file

            meta = _metadata(version, title or out.stem, native_resolution(source), half)
            save_file(state, str(tmp), metadata=meta)
        else:
            import torch

            torch.save({"state_dict": state}, tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    yaml_path: Path | None = None
    if version in ("sd21", "sd21-base"):
        yaml_path = out.with_suffix(".yaml")
        _atomic_write_text(yaml_path, inference_yaml(source, version))
    return ConversionResult(
        path=out,
        version=version,
        format=file_format,
        half=half,
        sha256=digest,
        size_bytes=size,
        yaml_path=yaml_path,
        tensors=len(state),
    )


# --------------------------------------------------------------------------- validation


def _pipeline_class(version: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if version == "sdxl" else StableDiffusionPipeline


_COMPONENTS = {
    "sd15": ("unet", "vae", "text_encoder"),
    "sd21-base": ("unet", "vae", "text_encoder"),
    "sd21": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}


def load_single_file(path: Path, source: Path, version: str) -> Any:
    """The pipeline in single file ``path`` via diffusers' ``from_single_file``, offline, with
    the component configs (and tokenizers, scheduler) of the diffusers folder ``source``."""
    import torch

    with quiet_hub():
        pipe = _pipeline_class(version).from_single_file(
            str(path),
            config=str(source),
            local_files_only=True,
            dtype=torch.float32,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_source(source: Path, version: str, *, half: bool = False, device: str = "cpu") -> Any:
    """The diffusers pipeline in ``source`` in fp32; with ``half``, its weights are rounded
    through fp16 first (what a half-precision file holds)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True}
    if version != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    with quiet_hub():
        pipe = _pipeline_class(version).from_pretrained(str(source), **kwargs)
    if half:
        with torch.no_grad():
            for name in _COMPONENTS[version]:
                for tensor in getattr(pipe, name).state_dict().values():
                    if tensor.is_floating_point():
                        tensor.copy_(tensor.half().float())
    pipe.set_progress_bar_config(disable=True)
    return pipe if device == "cpu" else pipe.to(device)


def _compare_components(loaded: Any, reference: Any, version: str) -> dict[str, int]:
    import torch

    counts: dict[str, int] = {}
    problems: list[str] = []
    for name in _COMPONENTS[version]:
        ours = getattr(loaded, name).state_dict()
        theirs = getattr(reference, name).state_dict()
        counts[name] = 0
        for key, expected in theirs.items():
            if key.endswith("position_ids"):
                continue  # derived buffer, rebuilt by the model
            got = ours.get(key)
            counts[name] += 1
            if got is None:
                problems.append(f"{name}.{key}: missing")
            elif got.is_meta:
                problems.append(f"{name}.{key}: not in the file")
            elif got.shape != expected.shape:
                problems.append(
                    f"{name}.{key}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
                )
            elif not torch.equal(got.to(expected.device, expected.dtype), expected):
                diff = (got.to(expected.device, expected.dtype) - expected).abs().max().item()
                problems.append(f"{name}.{key}: differs (max {diff:.3g})")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointValidationError(
            f"{len(problems)} tensors do not load back equal to the source: {shown}{more}"
        )
    return counts


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when there is a GPU, else ``cpu``; an unusable device is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda needs a CUDA GPU; this machine has none")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return device


def validation_size(source: Path) -> int:
    """The smallest sensible validation render: 8 latent pixels (more if the UNet needs)."""
    unet = _read_json(source / "unet" / "config.json")
    vae = _read_json(source / "vae" / "config.json")
    latent = max(8, 1 << (len(unet["block_out_channels"]) - 1))
    return latent << (len(vae["block_out_channels"]) - 1)


def render(
    pipe: Any,
    *,
    prompt: str,
    seeds: list[int],
    steps: int,
    size: int,
    guidance: float = 7.5,
    output_type: str = "np",
) -> Any:
    """Images of ``prompt``, one per seed, each from its own seeded CPU generator."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        result = pipe(
            prompt=[prompt] * len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type=output_type,
        )
    return result.images


def validate_checkpoint(
    path: Path,
    source: Path,
    *,
    version: str | None = None,
    half: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Check that single file ``path`` is the diffusers pipeline in ``source``.

    Loads it with ``from_single_file`` (offline, configs from ``source``), requires every
    UNet, VAE and text encoder tensor to equal the source's (the source rounded through
    fp16 when ``half``), then renders one fixed-seed image with both pipelines and requires
    them to agree. Raises :class:`CheckpointValidationError` otherwise.
    """
    import numpy as np

    say = progress or (lambda _msg: None)
    source = source.expanduser().resolve()
    version = check_version(source, version)
    device = resolve_device(device)
    say("loading the single file back")
    try:
        loaded = load_single_file(path, source, version)
    except VitdexError:
        raise
    except Exception as exc:  # diffusers raises plain errors for unreadable layouts
        raise CheckpointValidationError(
            f"diffusers cannot load {path} back: {type(exc).__name__}: {exc}"
        ) from exc
    if device != "cpu":
        loaded.to(device)
    reference = load_source(source, version, half=half, device=device)
    say("comparing tensors")
    counts = _compare_components(loaded, reference, version)
    say("rendering the fixed-seed sample with both pipelines")
    size = validation_size(source)
    kwargs: dict[str, Any] = {
        "prompt": VALIDATION_PROMPT,
        "seeds": [VALIDATION_SEED],
        "steps": VALIDATION_STEPS,
        "size": size,
    }
    ours = np.asarray(render(loaded, **kwargs), dtype=np.float64)
    theirs = np.asarray(render(reference, **kwargs), dtype=np.float64)
    if ours.shape != theirs.shape or not np.isfinite(ours).all():
        raise CheckpointValidationError(f"the sample from {path} is not a finite {theirs.shape}")
    max_diff = float(np.abs(ours - theirs).max())
    if max_diff > SAMPLE_ATOL:
        raise CheckpointValidationError(
            f"the fixed-seed sample from {path} differs from the source's by up to "
            f"{max_diff:.3g} (allowed {SAMPLE_ATOL})"
        )
    return ValidationReport(tensors=counts, sample_max_diff=max_diff, pipeline=loaded)
