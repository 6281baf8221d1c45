"""Heads: train a linear classifier on stored vectors, apply it, read its report and its
least certain photos, correct labels. (Filled in by the heads API work.)"""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class HeadsController(Controller):
    """``/api/v1/heads``."""

    path = "/heads"
    tags: Sequence[str] = ["heads"]
