"""DreamBooth training runs."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class TrainingController(Controller):
    """DreamBooth training runs."""

    path = "/training-runs"
    tags: Sequence[str] = ["training"]
