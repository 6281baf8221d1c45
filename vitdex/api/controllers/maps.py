"""2-D maps of a space (PCA, UMAP), computed as jobs and cached."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Controller


class MapsController(Controller):
    """2-D maps of a space (PCA, UMAP), computed as jobs and cached."""

    path = "/maps"
    tags: Sequence[str] = ["maps"]
