"""Validating an SDXL file holds one pipeline at a time, not the file's and the source's.

A real SDXL validation used to load two float32 pipelines side by side (~28 GB). Each case
runs in a fresh process and reports its peak resident memory (``VmHWM``, reset after the
imports) above the resident memory then; the UNet is widened so weights dominate.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vitdex.training.convert import convert

pytestmark = pytest.mark.slow

#: The new peak must stay below this fraction of the two-pipeline one (measured: ~0.5).
MAX_FRACTION = 0.75

_SCRIPT = """
import json, sys
from pathlib import Path

mode, path, source = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from vitdex.training.convert import load_single_file, load_source, render, validate_checkpoint
from vitdex.training.convert.validate import VALIDATION_PROMPT, validation_size

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


torch.set_num_threads(1)
# The imports' own transient peak must not count: reset the high-water mark to now.
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
if mode == "two-pipelines":  # what validation did before: both pipelines at once
    args = dict(prompt=VALIDATION_PROMPT, seeds=[0], steps=2, size=validation_size(source))
    loaded = load_single_file(path, source, "sdxl")
    reference = load_source(source, "sdxl")
    diff = np.abs(render(loaded, **args) - render(reference, **args)).max()
    assert diff <= 1e-4, diff
else:
    validate_checkpoint(path, source)
print(json.dumps({"growth_bytes": status("VmHWM") - base}))
"""


def _peak_growth(mode: str, path: Path, source: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, str(path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    growth: int = json.loads(done.stdout.strip().splitlines()[-1])["growth_bytes"]
    return growth


def _widen_unet(source: Path, channels: tuple[int, int]) -> int:
    """Replace the tiny SDXL's UNet with a wider random one; returns the pipeline's
    parameter count."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    config = json.loads((source / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["block_out_channels"] = list(channels)
    torch.manual_seed(0)
    shutil.rmtree(source / "unet")
    unet: Any = UNet2DConditionModel(**config)
    unet.save_pretrained(source / "unet", safe_serialization=True)
    total = 0
    for file in source.glob("*/*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(fh.get_slice(key).get_shape())
    return total


def test_sdxl_validation_peaks_at_one_pipeline(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tmp_path / "sdxl"
    shutil.copytree(tiny_sd_factory("sdxl"), source)
    params = _widen_unet(source, (256, 512))
    assert params > 50_000_000  # ~230 MB in fp32: weights dominate the measurement
    written = convert(source, tmp_path / "wide.safetensors")

    old = _peak_growth("two-pipelines", written.path, source)
    new = _peak_growth("validate", written.path, source)
    pipeline_bytes = 4 * params
    print(
        f"\nSDXL-shaped, {params / 1e6:.1f}M parameters ({pipeline_bytes / 2**20:.0f} MiB fp32): "
        f"peak growth two pipelines {old / 2**20:.0f} MiB "
        f"({old / pipeline_bytes:.2f} pipelines), component by component "
        f"{new / 2**20:.0f} MiB ({new / pipeline_bytes:.2f} pipelines), ratio {new / old:.2f}"
    )
    assert old > 1.8 * pipeline_bytes  # the old way really held two pipelines
    assert new < MAX_FRACTION * old
