"""DreamBooth training runs."""

from __future__ import annotations

from typing import ClassVar

from litestar import Controller


class TrainingController(Controller):
    """DreamBooth training runs."""

    path = "/training-runs"
    tags: ClassVar[list[str]] = ["training"]
