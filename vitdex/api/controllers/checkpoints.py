"""Registered single-file Stable Diffusion checkpoints."""

from __future__ import annotations

from typing import ClassVar

from litestar import Controller


class CheckpointsController(Controller):
    """Registered single-file Stable Diffusion checkpoints."""

    path = "/checkpoints"
    tags: ClassVar[list[str]] = ["training"]
