"""Similarity queries saved by name."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller
from litestar.types import Guard

from vitdex.api.validation import json_content_type


class SavedSearchesController(Controller):
    """``/api/v1/saved-searches``: Similarity queries saved by name."""

    path = "/saved-searches"
    tags: Sequence[str] = ["saved-searches"]
    guards: Sequence[Guard] = [json_content_type]
