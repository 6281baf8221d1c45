"""The registry of single-file checkpoints: convert a diffusers folder (or a finished
training run), validate the file, render its sample grid and register it
(:mod:`.register`, :mod:`.samples`); list, show and delete registered ones
(:mod:`.catalog`, which loads neither torch nor diffusers).
"""

from __future__ import annotations

from vitdex.training.registry.catalog import (
    delete_checkpoint,
    list_checkpoints,
    open_sessions,
    sample_file,
    show_checkpoint,
)
from vitdex.training.registry.register import (
    Check,
    Provenance,
    check_name,
    convert_and_register,
    register_file,
)
from vitdex.training.registry.samples import SAMPLE_GRID, SAMPLE_SEEDS, sample_path_for

__all__ = [
    "SAMPLE_GRID",
    "SAMPLE_SEEDS",
    "Check",
    "Provenance",
    "check_name",
    "convert_and_register",
    "delete_checkpoint",
    "list_checkpoints",
    "open_sessions",
    "register_file",
    "sample_file",
    "sample_path_for",
    "show_checkpoint",
]
