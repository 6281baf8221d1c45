"""The Stable Diffusion version registry: what each version is and what it can train.

A *version* says what a Stable Diffusion checkpoint is: the resolution it was trained at,
what its UNet predicts (noise, ``epsilon``, or velocity, ``v_prediction``), its text
encoders and pipeline class, and whether a full fine-tune is practical (and on how much
GPU memory). :mod:`vitdex.training.bases` detects and loads concrete bases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vitdex.errors import ConfigError

__all__ = [
    "BASE_VERSIONS",
    "SD_VERSIONS",
    "BaseVersion",
    "check_full_finetune",
    "check_resolution",
    "get_version",
]


@dataclass(frozen=True)
class BaseVersion:
    """What one Stable Diffusion version is and how it trains."""

    #: Registry key: ``sd15``, ``sd21-base``, ``sd21`` or ``sdxl``.
    name: str
    #: Human-readable name.
    title: str
    #: The resolution the model was trained at (pixels, square).
    resolution: int
    #: What the UNet predicts: ``epsilon`` or ``v_prediction``.
    prediction_type: str
    #: Activation of the (first) text encoder: OpenAI CLIP uses quick_gelu, OpenCLIP gelu.
    text_encoder_act: str
    #: Width of the text conditioning the UNet cross-attends to.
    cross_attention_dim: int
    #: The reference checkpoint on the Hugging Face hub.
    hub_id: str
    # The rest is what SD 1.x and 2.x share; SDXL overrides it.
    #: Pipeline component names of the text encoders, in the order the UNet concatenates them.
    text_encoders: tuple[str, ...] = ("text_encoder",)
    #: The text encoders' classes (transformers).
    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel",)
    #: The diffusers pipeline class name.
    pipeline_class: str = "StableDiffusionPipeline"
    #: Whether a full fine-tune is the default (lora_rank None means 0); otherwise the
    #: version trains as LoRA unless a rank of 0 is asked for and the device can hold it.
    full_finetune: bool = True
    #: Least accelerator memory (GiB) a full fine-tune needs when ``full_finetune`` is
    #: False; None means LoRA only (unless forced).
    full_finetune_min_gib: float | None = None
    #: LoRA rank used when the version trains as LoRA and no rank was given.
    default_lora_rank: int = 16

    @property
    def min_resolution(self) -> int:
        """The lowest resolution accepted without ``force`` (half the native one)."""
        return self.resolution // 2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for the API and the CLI)."""
        return {
            "name": self.name,
            "title": self.title,
            "resolution": self.resolution,
            "min_resolution": self.min_resolution,
            "prediction_type": self.prediction_type,
            "text_encoders": list(self.text_encoders),
            "text_encoder_classes": list(self.text_encoder_classes),
            "pipeline_class": self.pipeline_class,
            "full_finetune": self.full_finetune,
            "full_finetune_min_gib": self.full_finetune_min_gib,
            "default_lora_rank": self.default_lora_rank,
            "hub_id": self.hub_id,
        }


_SD21_BASE = BaseVersion(
    name="sd21-base",
    title="Stable Diffusion 2.1 base (512 px)",
    resolution=512,
    prediction_type="epsilon",
    text_encoder_act="gelu",
    cross_attention_dim=1024,
    hub_id="stabilityai/stable-diffusion-2-1-base",
)

BASE_VERSIONS: dict[str, BaseVersion] = {
    v.name: v
    for v in (
        BaseVersion(
            name="sd15",
            title="Stable Diffusion 1.5",
            resolution=512,
            prediction_type="epsilon",
            text_encoder_act="quick_gelu",
            cross_attention_dim=768,
            hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        ),
        _SD21_BASE,
        replace(
            _SD21_BASE,
            name="sd21",
            title="Stable Diffusion 2.1 (768 px, v-prediction)",
            resolution=768,
            prediction_type="v_prediction",
            hub_id="stabilityai/stable-diffusion-2-1",
        ),
        BaseVersion(
            name="sdxl",
            title="Stable Diffusion XL 1.0",
            resolution=1024,
            prediction_type="epsilon",
            text_encoder_act="quick_gelu",
            cross_attention_dim=2048,
            hub_id="stabilityai/stable-diffusion-xl-base-1.0",
            text_encoders=("text_encoder", "text_encoder_2"),
            text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
            pipeline_class="StableDiffusionXLPipeline",
            # 2.6B UNet parameters: a full fine-tune with AdamW needs ~40 GB; with Adafactor,
            # fused backward, checkpointing and cached text outputs it fits a 24 GB card
            # (vitdex.training.presets gives the estimate); LoRA stays the default.
            full_finetune=False,
            full_finetune_min_gib=22.5,
        ),
    )
}


#: The version names, in the registry's order.
SD_VERSIONS: tuple[str, ...] = tuple(BASE_VERSIONS)


def get_version(name: str) -> BaseVersion:
    """The registry entry for ``name``; ConfigError for an unknown version."""
    try:
        return BASE_VERSIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown base model version {name!r}; choose one of {', '.join(BASE_VERSIONS)}"
        ) from None


def check_resolution(version: BaseVersion | str, resolution: int, *, force: bool = False) -> None:
    """Refuse a training resolution that does not fit the version, unless ``force``.

    A model fine-tuned above its native resolution repeats subjects and loses composition;
    far below it (under half) it learns blur. Multiples of 8 are required always: the VAE
    downsamples by 8 (the exact multiple the UNet needs is checked again on the loaded model).
    """
    v = get_version(version) if isinstance(version, str) else version
    if resolution <= 0 or resolution % 8:
        raise ConfigError(f"resolution must be a positive multiple of 8, got {resolution}")
    if force:
        return
    if resolution > v.resolution:
        raise ConfigError(
            f"{resolution} px does not fit {v.title}: it was trained at {v.resolution} px; "
            f"use {v.resolution} or less, or force it"
        )
    if resolution < v.min_resolution:
        raise ConfigError(
            f"{resolution} px is too small for {v.title} (native {v.resolution} px); "
            f"use at least {v.min_resolution}, or force it"
        )


def check_full_finetune(
    version: BaseVersion | str,
    device_type: str,
    total_memory_bytes: int | None,
    *,
    force: bool = False,
) -> None:
    """Refuse a full fine-tune (lora_rank 0) the device cannot hold, unless ``force``.

    Versions whose full fine-tune is the default pass. Others need a CUDA device with at
    least ``full_finetune_min_gib`` of total memory: a CPU or MPS device is refused (their
    memory is the host's, and a 2.6B-parameter UNet trains there at hours per step). The
    message names the memory found and needed, so the user knows what would fit.
    """
    v = get_version(version) if isinstance(version, str) else version
    if v.full_finetune or force:
        return
    if v.full_finetune_min_gib is None:
        raise ConfigError(f"{v.title} trains as LoRA only; set lora_rank, or force it")
    need = v.full_finetune_min_gib
    if device_type == "cuda" and total_memory_bytes is not None:
        found_gib = total_memory_bytes / 2**30
        if found_gib >= need:
            return
        found = f"a CUDA GPU with {found_gib:.1f} GiB"
    elif device_type == "cuda":
        found = "a CUDA GPU of unknown memory"
    elif device_type == "mps":
        found = "an Apple MPS device (shared memory, not a CUDA GPU)"
    else:
        found = f"a {device_type.upper()} device with no GPU memory"
    raise ConfigError(
        f"a full fine-tune of {v.title} (lora_rank 0) needs a CUDA GPU with at least "
        f"{need:g} GiB; found {found}, so it trains as LoRA only here: set lora_rank "
        "(e.g. 16), or force it"
    )
