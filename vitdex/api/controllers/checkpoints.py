"""Registered single-file Stable Diffusion checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class CheckpointsController(Controller):
    """Registered single-file Stable Diffusion checkpoints."""

    path = "/checkpoints"
    tags: Sequence[str] = ["training"]
