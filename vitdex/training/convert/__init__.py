"""Diffusers folder -> the original single-file Stable Diffusion layout, and its validation.

- :mod:`.keymaps`: each component's diffusers keys -> the original (LDM / sgm) keys.
- :mod:`.source`: reading the diffusers folder (configs, weights, SD version) into one
  original-layout state dict.
- :mod:`.files`: :func:`convert` writes that state dict as one ``.safetensors`` or
  ``.ckpt`` file (atomically, hashed) plus the SD 2.x inference YAML.
- :mod:`.validate`: :func:`validate_checkpoint` loads the file back and checks it.

Importing this package loads neither torch nor diffusers; the functions that need them
import them.
"""

from __future__ import annotations

from vitdex.training.bases import SD_VERSIONS
from vitdex.training.convert.files import (
    FORMATS,
    ConversionResult,
    atomic_path,
    convert,
    default_file_mode,
    inference_yaml,
    sha256_file,
)
from vitdex.training.convert.keymaps import (
    ConversionError,
    clip_to_ldm,
    openclip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from vitdex.training.convert.source import (
    check_version,
    detect_version,
    diffusers_to_ldm,
    native_resolution,
)
from vitdex.training.convert.validate import (
    CheckpointValidationError,
    ValidationReport,
    load_single_file,
    load_source,
    render,
    validate_checkpoint,
    validation_size,
)

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
    "default_file_mode",
    "detect_version",
    "diffusers_to_ldm",
    "inference_yaml",
    "load_single_file",
    "load_source",
    "native_resolution",
    "openclip_to_ldm",
    "render",
    "sha256_file",
    "unet_to_ldm",
    "vae_to_ldm",
    "validate_checkpoint",
    "validation_size",
]
