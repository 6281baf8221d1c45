"""DreamBooth from search results: curate, crop and caption, train, convert, register.

Names are imported on first use, so importing this package loads neither torch nor
diffusers: the API process lists datasets, runs and checkpoints without them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BASE_VERSIONS": "vitdex.training.bases",
    "TrainConfig": "vitdex.training.config",
    "TrainProgress": "vitdex.training.config",
    "TrainResult": "vitdex.training.config",
    "check_resolution": "vitdex.training.bases",
    "convert": "vitdex.training.convert",
    "convert_and_register": "vitdex.training.registry",
    "create_dataset": "vitdex.training.curate",
    "create_run": "vitdex.training.runs",
    "detect_version": "vitdex.training.bases",
    "export_dataset": "vitdex.training.export",
    "load_base": "vitdex.training.bases",
    "resume_run": "vitdex.training.runs",
    "train": "vitdex.training.dreambooth",
    "validate_checkpoint": "vitdex.training.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
