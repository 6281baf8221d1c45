"""Validating a written single-file checkpoint against its diffusers source.

:func:`validate_checkpoint` loads the file back with the diffusers pipeline's
``from_single_file`` (offline, configs from the source folder), compares every tensor with
the source and renders the same fixed-seed sample with both pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdex.errors import VitdexError
from vitdex.training.convert.source import check_version, read_json
from vitdex.training.quiet import quiet_hub

__all__ = [
    "CheckpointValidationError",
    "ValidationReport",
    "load_single_file",
    "load_source",
    "render",
    "validate_checkpoint",
    "validation_size",
]

#: Prompt, seed and steps of the sample both pipelines render during validation.
VALIDATION_PROMPT = "a photo of sks dog"
VALIDATION_SEED = 0
VALIDATION_STEPS = 2
#: Largest difference (images in [0, 1]) between the two renders that still counts as equal.
SAMPLE_ATOL = 1e-4


class CheckpointValidationError(VitdexError):
    """A written single-file checkpoint does not load back equal to its source."""

    http_status = 422
    exit_code = 1


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_checkpoint`."""

    #: Tensors compared per component (``unet``, ``vae``, ``text_encoder``...).
    tensors: dict[str, int]
    #: Largest absolute pixel difference between the two fixed-seed renders.
    sample_max_diff: float
    #: The pipeline loaded from the single file (for rendering more samples).
    pipeline: Any = field(repr=False)


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


def validation_size(source: Path) -> int:
    """The smallest sensible validation render: 8 latent pixels (more if the UNet needs)."""
    unet = read_json(source / "unet" / "config.json")
    vae = read_json(source / "vae" / "config.json")
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

    from vitdex.devices import resolve_device

    say = progress or (lambda _msg: None)
    source = source.expanduser().resolve()
    version = check_version(source, version)
    device = str(resolve_device(device))
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
