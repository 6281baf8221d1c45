"""Memory presets (``8gb``, ``12gb``, ``24gb``): training settings per base that fit a GPU.

A preset fills in the settings that decide a run's peak accelerator memory (precision,
gradient checkpointing, optimizer, fused backward, latent caching, LoRA rank, batch size)
for a base version; whatever the caller set explicitly wins. The resolution stays the
version's native one. :func:`estimate_memory_gb` says what a set of settings is expected
to need, from parameter counts; measured peaks need a GPU (``TrainResult.peak_memory_bytes``).

The estimate, per stage (two-stage runs: the larger of the text-encoder and UNet stages;
joint runs: both trained at once), in bytes::

    trained weights   4 B/param (fp32 master) + 2 B/param (autocast's bf16/fp16 copy
                      during the forward pass; 0 without mixed precision)
    gradients         4 B/param; 0 with fused backward (freed as each parameter steps)
    optimizer state   AdamW 8 B/param, 8-bit AdamW 2 B/param, Adafactor ~1 B/param
                      (factored second moment: rows + columns of each matrix, but 2/3 of
                      a 3x3 conv kernel's size, and convs are a sizeable share of a UNet)
    frozen weights    2 B/param with mixed precision (4 B without): every module not
                      trained in the stage, the VAE only when latents are not cached
    LoRA              the base frozen as above, plus weights + gradients + optimizer
                      state for the adapter parameters only (rank x per-rank count)
    activations       per image at native resolution (bf16, SDPA): ACTIVATION_GIB, with
                      or without gradient checkpointing, x images per micro-batch
                      (doubled with prior preservation), x (resolution / native)^2
    overhead          0.75 GiB (CUDA context, allocator slack)

Parameter counts used (PARAMS): SD 1.5 UNet 860M, CLIP ViT-L text encoder 123M, VAE 84M;
SD 2.1 UNet 866M, OpenCLIP ViT-H text encoder 340M; SDXL UNet 2.57B, text encoders 123M
(CLIP ViT-L) + 695M (OpenCLIP ViT-bigG). LoRA parameters per rank (LORA_PER_RANK) count
the attention projections vitdex adapts (to_q/k/v/out, q/k/v/out_proj): per UNet
transformer block of width d with cross-attention width c, 14d + 2c; per text-encoder
layer of width h, 8h. The activation figures are estimates from public reports, not
measurements; no GPU was available when they were written down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vitdex.errors import ConfigError

__all__ = [
    "ACTIVATION_GIB",
    "LORA_PER_RANK",
    "PARAMS",
    "PRESETS",
    "PRESET_SETTINGS",
    "apply_preset",
    "describe_presets",
    "estimate_memory_gb",
    "full_run_defaults",
    "preset_settings",
    "preset_summary",
    "preset_version",
]

PRESETS = ("8gb", "12gb", "24gb")
#: The memory each preset is meant to fit (GiB).
_BUDGET_GIB = {"8gb": 8.0, "12gb": 12.0, "24gb": 24.0}
_NATIVE = {"sd15": 512, "sd21-base": 512, "sd21": 768, "sdxl": 1024}

#: Parameter counts: UNet, text encoders (in order), VAE.
PARAMS: dict[str, dict[str, Any]] = {
    "sd15": {"unet": 860e6, "text": (123e6,), "vae": 84e6},
    "sd21-base": {"unet": 866e6, "text": (340e6,), "vae": 84e6},
    "sd21": {"unet": 866e6, "text": (340e6,), "vae": 84e6},
    "sdxl": {"unet": 2.57e9, "text": (123e6, 695e6), "vae": 84e6},
}


def _unet_lora(blocks: Mapping[int, int], cross: int) -> int:
    # Self-attention: q, k, v, out of d x d; cross-attention: q, out d x d, k, v c x d.
    return sum(n * (14 * d + 2 * cross) for d, n in blocks.items())


_SD1_BLOCKS = {320: 5, 640: 5, 1280: 6}  # transformer blocks per width (down, mid, up)
_SDXL_BLOCKS = {640: 10, 1280: 60}  # depth 2 at 640, depth 10 at 1280
#: LoRA parameters per unit of rank: UNet, text encoders (in order).
LORA_PER_RANK: dict[str, dict[str, Any]] = {
    "sd15": {"unet": _unet_lora(_SD1_BLOCKS, 768), "text": (12 * 8 * 768,)},
    "sd21-base": {"unet": _unet_lora(_SD1_BLOCKS, 1024), "text": (23 * 8 * 1024,)},
    "sd21": {"unet": _unet_lora(_SD1_BLOCKS, 1024), "text": (23 * 8 * 1024,)},
    "sdxl": {"unet": _unet_lora(_SDXL_BLOCKS, 2048), "text": (12 * 8 * 768, 32 * 8 * 1280)},
}
#: Activation memory per image at native resolution, GiB: (no checkpointing, checkpointing).
ACTIVATION_GIB = {
    "sd15": (5.0, 1.0),
    "sd21-base": (5.0, 1.0),
    "sd21": (11.25, 2.25),
    "sdxl": (20.0, 2.5),
}
_TEXT_ACTIVATION_GIB = 0.25
_OVERHEAD_GIB = 0.75
_DEFAULT_LORA_RANK = 16

_FULL_LEAN = {
    "lora_rank": 0,
    "optimizer": "adafactor",
    "fused_backward": True,
    "gradient_checkpointing": True,
}
_LORA_LEAN = {
    "optimizer": "adamw8bit",
    "fused_backward": False,
    "gradient_checkpointing": True,
}
#: The settings of each preset per version (before the shared ones in _COMMON).
PRESET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "8gb": {
        "sd15": {**_FULL_LEAN, "batch_size": 1},
        "sd21-base": {**_LORA_LEAN, "lora_rank": 32, "batch_size": 1},
        "sd21": {**_LORA_LEAN, "lora_rank": 32, "batch_size": 1},
        "sdxl": {**_LORA_LEAN, "lora_rank": 8, "text_encoder_steps": 0, "batch_size": 1},
    },
    "12gb": {
        "sd15": {**_FULL_LEAN, "optimizer": "adamw8bit", "batch_size": 2},
        "sd21-base": {**_FULL_LEAN, "optimizer": "adamw8bit", "batch_size": 1},
        "sd21": {**_FULL_LEAN, "optimizer": "adamw8bit", "batch_size": 1},
        "sdxl": {**_LORA_LEAN, "lora_rank": 32, "batch_size": 1},
    },
    "24gb": {
        "sd15": {
            "lora_rank": 0,
            "optimizer": "adamw",
            "fused_backward": False,
            "gradient_checkpointing": False,
            "batch_size": 1,
        },
        "sd21-base": {
            "lora_rank": 0,
            "optimizer": "adamw",
            "fused_backward": False,
            "gradient_checkpointing": False,
            "batch_size": 1,
        },
        "sd21": {
            "lora_rank": 0,
            "optimizer": "adamw",
            "fused_backward": False,
            "gradient_checkpointing": True,
            "batch_size": 1,
        },
        # Full SDXL: Adafactor, fused backward, checkpointing, frozen cached text encoders.
        "sdxl": {**_FULL_LEAN, "text_encoder_steps": 0, "batch_size": 1},
    },
}
_COMMON = {"mixed_precision": "bf16", "cache_latents": True}


def preset_version(version: str | None) -> str:
    """The version a preset is chosen for: ``sd15`` when the base's version is not known
    before loading (a hub id or single file without ``version``)."""
    if version is None:
        return "sd15"
    if version not in PARAMS:
        raise ConfigError(f"unknown base model version {version!r}; choose one of {_names()}")
    return version


def _names() -> str:
    return ", ".join(PARAMS)


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"unknown memory preset {preset!r}; choose one of {', '.join(PRESETS)}")


def preset_settings(preset: str, version: str | None) -> dict[str, Any]:
    """The settings preset ``preset`` chooses for ``version`` (None: ``sd15``'s)."""
    _check_preset(preset)
    return {**_COMMON, **PRESET_SETTINGS[preset][preset_version(version)]}


def apply_preset(options: Mapping[str, Any], version: str | None) -> dict[str, Any]:
    """``options`` with the preset's settings filled in where the caller set nothing.

    ``options["preset"]`` names the preset; without one ``options`` come back unchanged.
    Explicit options win, and an explicit ``use_8bit_adam`` counts as choosing the
    optimizer. ``version`` None (a hub id or single file whose version is known only once
    loaded) gets the ``sd15`` settings: give ``version`` for the others. An unknown preset
    is a ConfigError naming the presets.
    """
    preset = options.get("preset")
    if not preset:
        return dict(options)
    chosen = preset_settings(str(preset), version)
    taken = {k for k, v in options.items() if v is not None}
    if options.get("use_8bit_adam"):
        taken.add("optimizer")
    out = dict(options)
    for key, value in chosen.items():
        if key not in taken:
            out[key] = value
    return out


def full_run_defaults(options: Mapping[str, Any], version: str | None) -> dict[str, Any]:
    """``options`` with ``text_encoder_steps`` 0 for a full fine-tune (``lora_rank`` 0) of
    a version that trains as LoRA by default (SDXL), where the caller did not set it.

    Such a run keeps its text encoders frozen (their outputs are computed once), and the
    run resolves it so anyway; setting it before the run is created keeps the steps the
    catalog and the CLI report equal to those trained.
    """
    from vitdex.training.bases import get_version

    out = dict(options)
    if version is None or out.get("lora_rank") != 0 or out.get("text_encoder_steps") is not None:
        return out
    if not get_version(version).full_finetune:
        out["text_encoder_steps"] = 0
    return out


def _bytes_per_param(optimizer: str, fused: bool, mixed: bool) -> float:
    state = {"adamw": 8.0, "adamw8bit": 2.0, "adafactor": 1.0}.get(optimizer, 8.0)
    return 4.0 + (2.0 if mixed else 0.0) + (0.0 if fused else 4.0) + state


def estimate_memory_gb(version: str | None, settings: Mapping[str, Any]) -> float:
    """Expected peak accelerator memory (GiB) of a run with ``settings`` on ``version``.

    ``settings`` are TrainConfig fields (missing ones take TrainConfig's defaults); see the
    module docstring for the formula. An estimate for planning, not a measurement.
    """
    v = preset_version(version)
    params, per_rank = PARAMS[v], LORA_PER_RANK[v]
    mixed = settings.get("mixed_precision", "auto") != "no"
    frozen_b = 2.0 if mixed else 4.0
    optimizer = str(settings.get("optimizer") or "adamw")
    if settings.get("use_8bit_adam") and optimizer == "adamw":
        optimizer = "adamw8bit"
    fused = bool(settings.get("fused_backward", False))
    rank = settings.get("lora_rank")
    if rank is None:
        rank = 0 if v != "sdxl" else _DEFAULT_LORA_RANK
    text_steps = int(settings.get("text_encoder_steps", 350) or 0)
    if v == "sdxl" and rank == 0:
        optimizer = "adafactor" if optimizer == "adamw" else optimizer
        text_steps, checkpointing = 0, True  # as the run resolves full SDXL
    else:
        checkpointing = bool(settings.get("gradient_checkpointing", False))
    trained_b = _bytes_per_param(optimizer, fused, mixed)
    unet_n, vae_n = float(params["unet"]), float(params["vae"])
    text_n = float(sum(params["text"]))
    lora_unet, lora_text = float(per_rank["unet"]), float(sum(per_rank["text"]))
    images = int(settings.get("batch_size", 1) or 1) * (
        2 if settings.get("prior_preservation") else 1
    )
    scale = (int(settings.get("resolution") or _NATIVE[v]) / _NATIVE[v]) ** 2
    activations = ACTIVATION_GIB[v][1 if checkpointing else 0] * images * scale * 2**30
    vae = 0.0 if settings.get("cache_latents", True) else vae_n * frozen_b

    def stage(train_unet: bool, train_text: bool) -> float:
        total = vae + activations + _OVERHEAD_GIB * 2**30
        if not train_unet:
            total += _TEXT_ACTIVATION_GIB * 2**30
        if rank:
            total += (unet_n + text_n) * frozen_b
            adapters = lora_unet * train_unet + lora_text * train_text
            total += adapters * rank * _bytes_per_param(optimizer, fused, mixed)
            return total
        # Full: the UNet stays fp32 for the whole run (a later stage trains it), text
        # encoders fp32 when some stage trains them.
        unet_b = trained_b if train_unet else 4.0
        total += unet_n * unet_b
        total += text_n * (trained_b if train_text else 4.0 if text_steps else frozen_b)
        return total

    if text_steps and settings.get("mode") == "joint":
        peak = stage(True, True)
    elif text_steps:
        peak = max(stage(False, True), stage(True, False))
    else:
        peak = stage(True, False)
    return round(peak / 2**30, 1)


def preset_summary(
    preset: str, version: str | None, chosen: Mapping[str, Any], saved: Mapping[str, Any]
) -> list[str]:
    """Lines saying what ``preset`` filled in (from the run's ``saved`` config), what the
    caller's ``chosen`` options kept, and the expected peak memory of the saved settings."""
    settings = preset_settings(preset, version)
    filled = [f"{k}={saved[k]}" for k in settings if k not in chosen and k in saved]
    kept = [f"{k}={chosen[k]}" for k in settings if k in chosen]
    which = version or "sd15 (the version is known only after loading; give --version)"
    lines = [f"preset {preset} for {which}: {', '.join(filled) or 'nothing left to set'}"]
    if kept:
        lines.append(f"kept as given: {', '.join(kept)}")
    expected = estimate_memory_gb(version, saved)
    budget = _BUDGET_GIB[preset]
    note = "" if expected <= budget else f"; more than {budget:g} GiB: expect out-of-memory"
    lines.append(f"expected peak memory ~{expected:.1f} GiB (estimate){note}")
    return lines


def describe_presets(version: str | None = None) -> list[dict[str, Any]]:
    """One row per preset for ``version`` (None: ``sd15``): ``{preset, version, settings,
    expected_memory_gb, budget_gb, fits}``; the expected peak comes from
    :func:`estimate_memory_gb`."""
    v = preset_version(version)
    rows = []
    for preset in PRESETS:
        settings = preset_settings(preset, v)
        expected = estimate_memory_gb(v, settings)
        rows.append(
            {
                "preset": preset,
                "version": v,
                "settings": settings,
                "expected_memory_gb": expected,
                "budget_gb": _BUDGET_GIB[preset],
                "fits": expected <= _BUDGET_GIB[preset],
            }
        )
    return rows
