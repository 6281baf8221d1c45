"""Reading a diffusers folder: its configs, weights and SD version, and the whole pipeline
as one original-layout state dict (see :mod:`.keymaps` for the per-component maps)."""

from __future__ import annotations

import json
from collections.abc import Iterable
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
    "read_safetensors",
    "safetensors_index",
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


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def safetensors_index(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """Where a safetensors file's data starts, and each tensor's dtype, shape and offsets."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header: dict[str, Any] = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path} as safetensors: {exc}") from None
    header.pop("__metadata__", None)
    return 8 + size, header


def read_safetensors(
    path: Path, keys: Iterable[str], index: tuple[int, dict[str, dict[str, Any]]] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` of a safetensors file, read with plain reads.

    Unlike ``safe_open`` (a memory map whose touched pages stay resident while it is
    open), only the tensors returned take memory, and they go when the caller drops them.
    """
    import torch

    start, header = index or safetensors_index(path)
    out: dict[str, torch.Tensor] = {}
    with path.open("rb") as fh:
        for key in keys:
            info = header[key]
            dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            buffer = bytearray(end - begin)
            fh.seek(start + begin)
            if fh.readinto(buffer) != len(buffer):
                raise ConversionError(f"{path} ends inside tensor {key!r}")
            flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            out[key] = flat.reshape(info["shape"])
    return out


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
