"""DreamBooth datasets curated from search results."""

from __future__ import annotations

from typing import ClassVar

from litestar import Controller


class DatasetsController(Controller):
    """DreamBooth datasets curated from search results."""

    path = "/datasets"
    tags: ClassVar[list[str]] = ["training"]
