"""Tags on photos."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller
from litestar.types import Guard

from vitdex.api.validation import json_content_type


class TagsController(Controller):
    """``/api/v1/tags``: Tags on photos."""

    path = "/tags"
    tags: Sequence[str] = ["tags"]
    guards: Sequence[Guard] = [json_content_type]
