"""Duplicate groups (exact and near copies) and their review."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller
from litestar.types import Guard

from vitdex.api.validation import json_content_type


class DuplicatesController(Controller):
    """``/api/v1/duplicates``: Duplicate groups (exact and near copies) and their review."""

    path = "/duplicates"
    tags: Sequence[str] = ["duplicates"]
    guards: Sequence[Guard] = [json_content_type]
