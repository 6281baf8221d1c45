"""The sample grid of a registered checkpoint: fixed-seed renders beside the file.

The grid is ``<stem>.preview.png`` (the name AUTOMATIC1111 shows as the checkpoint's card
picture) and carries AUTOMATIC1111's ``parameters`` text, so its PNG Info tab reads the
prompt, steps, sampler, seeds and model hash back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitdex.errors import ConfigError
from vitdex.training.convert import atomic_path, native_resolution, render
from vitdex.training.convert.source import read_json

__all__ = [
    "DEFAULT_SAMPLE_STEPS",
    "MAX_SAMPLE_SIZE",
    "MAX_SAMPLE_STEPS",
    "SAMPLE_GRID",
    "SAMPLE_SEEDS",
    "check_sample",
    "sample_path_for",
    "sample_prompt",
    "write_sample",
]

#: Seeds of the registered sample grid (one image each) and the grid's columns x rows.
SAMPLE_SEEDS = (0, 1, 2, 3)
SAMPLE_GRID = (2, 2)
#: Prompt of the sample grid when neither the caller nor the training config gives one.
DEFAULT_SAMPLE_PROMPT = "a photo"
DEFAULT_SAMPLE_STEPS = 20
MAX_SAMPLE_STEPS = 500
#: Largest grid image side (pixels); SDXL's native 1024 fits with room.
MAX_SAMPLE_SIZE = 4096
SAMPLE_GUIDANCE = 7.5


def check_sample(source: Path, *, size: int | None, steps: int) -> int | None:
    """Refuse grid options the pipeline in diffusers folder ``source`` cannot render;
    returns ``size`` (``None``: the base's native resolution, not checked here).

    Called before anything is converted, so a bad option costs nothing. A size must be a
    multiple of the VAE's downscale factor (8 for every SD) and give at least 8 latent
    pixels a side (64 px for SD): below that the UNet's lowest level has nothing left.
    """
    if not 1 <= steps <= MAX_SAMPLE_STEPS:
        raise ConfigError(f"sample steps must be 1 to {MAX_SAMPLE_STEPS}, not {steps}")
    if size is None:
        return None
    vae = read_json(source / "vae" / "config.json")
    factor = 1 << (len(vae["block_out_channels"]) - 1)
    smallest = 8 * factor
    if size % factor or not smallest <= size <= MAX_SAMPLE_SIZE:
        raise ConfigError(
            f"sample size {size} px: use a multiple of {factor} from {smallest} to "
            f"{MAX_SAMPLE_SIZE} (the native size is {native_resolution(source)})"
        )
    return size


def sample_path_for(checkpoint_file: Path) -> Path:
    """Where the sample grid of a checkpoint goes: ``<stem>.preview.png`` beside the file,
    the name AUTOMATIC1111 shows as the checkpoint's card picture."""
    return checkpoint_file.with_name(checkpoint_file.stem + ".preview.png")


def _grid(images: list[Any], columns: int, rows: int) -> Any:
    from PIL import Image

    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def write_sample(
    pipe: Any,
    target: Path,
    *,
    prompt: str,
    steps: int,
    size: int,
    name: str,
    sha256: str,
) -> Path:
    """Render the grid of ``pipe`` to ``target`` (atomically) with its parameters text."""
    from PIL.PngImagePlugin import PngInfo

    images = render(
        pipe,
        prompt=prompt,
        seeds=list(SAMPLE_SEEDS),
        steps=steps,
        size=size,
        guidance=SAMPLE_GUIDANCE,
        output_type="pil",
    )
    grid = _grid(list(images), *SAMPLE_GRID)
    info = PngInfo()
    sampler = type(pipe.scheduler).__name__.removesuffix("Scheduler")
    # AUTOMATIC1111's "parameters" chunk: its PNG Info tab reads the settings back.
    info.add_text(
        "parameters",
        f"{prompt}\nSteps: {steps}, Sampler: {sampler}, CFG scale: {SAMPLE_GUIDANCE}, "
        f"Seed: {SAMPLE_SEEDS[0]}, Size: {size}x{size}, Model hash: {sha256[:10]}, "
        f"Model: {name}, Grid: {SAMPLE_GRID[0]}x{SAMPLE_GRID[1]} seeds "
        f"{', '.join(str(s) for s in SAMPLE_SEEDS)}",
    )
    with atomic_path(target) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    return target


def sample_prompt(explicit: str | None, config: Mapping[str, Any]) -> str:
    """The grid's prompt: the one given, else the training config's, else a neutral one."""
    if explicit:
        return explicit
    for key in ("instance_prompt", "prompt"):
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return DEFAULT_SAMPLE_PROMPT
