"""LoRA files extracted from trained checkpoints: the low-rank difference to their base,
in kohya's format (:mod:`.keys`, :mod:`.extract`), registered with their source
(:mod:`.register`).

Importing this package loads neither torch nor diffusers.
"""

from __future__ import annotations

from vitdex.training.lora.extract import MAX_RANK, ExtractResult, extract_lora, lora_metadata
from vitdex.training.lora.keys import Target, text_encoder_targets, unet_targets
from vitdex.training.lora.register import (
    JOB_KIND,
    LoraSource,
    enqueue_lora_extract,
    extract_and_register,
    resolve_source,
)

__all__ = [
    "JOB_KIND",
    "MAX_RANK",
    "ExtractResult",
    "LoraSource",
    "Target",
    "enqueue_lora_extract",
    "extract_and_register",
    "extract_lora",
    "lora_metadata",
    "resolve_source",
    "text_encoder_targets",
    "unet_targets",
]
