"""Reading a diffusers folder: its configs, weights and SD version, and the whole pipeline
as one original-layout state dict (see :mod:`.keymaps` for the per-component maps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdex.errors import ConfigError
from vitdex.training import bases
from vitdex.training.bases import SD_VERSIONS
from vitdex.training.convert.keymaps import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ConversionError,
    clip_to_ldm,
    openclip_to_ldm,
    prefixed,
    unet_to_ldm,
    vae_to_ldm,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_version",
    "detect_version",
    "diffusers_to_ldm",
    "load_state_dict",
    "native_resolution",
    "read_json",
]


def read_json(path: Path) -> dict[str, Any]:
    """A config file of the folder; missing or unreadable is a :class:`ConversionError`."""
    try:
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing; is this a diffusers folder?") from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    return data


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """A component's weights from its folder: safetensors (single or sharded) or .bin."""
    import torch
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return dict(load_file(folder / name))
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = sorted(set(read_json(index)["weight_map"].values()))
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
    if not (folder / "model_index.json").is_file():
        raise ConversionError(f"{folder} is not a diffusers folder (no model_index.json)")
    version = bases.detect_version(folder)
    prediction = read_json(folder / "scheduler" / "scheduler_config.json").get(
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
    unet = read_json(folder / "unet" / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    factor = 1 << (len(vae["block_out_channels"]) - 1)
    return int(unet["sample_size"]) * factor


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
    unet = unet_to_ldm(load_state_dict(folder / "unet"), read_json(folder / "unet" / "config.json"))
    vae = vae_to_ldm(load_state_dict(folder / "vae"), read_json(folder / "vae" / "config.json"))
    text = load_state_dict(folder / "text_encoder")
    state = {**prefixed(UNET_PREFIX, unet), **prefixed(VAE_PREFIX, vae)}
    if version == "sd15":
        state.update(prefixed(SD1_TEXT_PREFIX, clip_to_ldm(text)))
    elif version in ("sd21", "sd21-base"):
        state.update(prefixed(SD2_TEXT_PREFIX, openclip_to_ldm(text)))
    else:
        state.update(prefixed(SDXL_TEXT_PREFIX, clip_to_ldm(text)))
        text_2 = load_state_dict(folder / "text_encoder_2")
        state.update(prefixed(SDXL_TEXT2_PREFIX, openclip_to_ldm(text_2)))
    return state, version
