"""Facet counts and id lists for the browsing filters."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class FacetsController(Controller):
    """Facet counts and id lists for the browsing filters."""

    path = "/"
    tags: Sequence[str] = ["images"]
