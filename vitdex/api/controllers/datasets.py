"""DreamBooth datasets curated from search results."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class DatasetsController(Controller):
    """DreamBooth datasets curated from search results."""

    path = "/datasets"
    tags: Sequence[str] = ["training"]
